//! [`TempHood`]: a throw-away hood in a temporary folder, for benchmarks,
//! demos and tests.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::create::{create_hood, create_peer, CreatedFiles};
use crate::error::PkiError;
use crate::hood::Hood;
use crate::identity::Identity;

/// A hood made with [`create_hood`] in a new temporary folder (removed when
/// this value is dropped), with peers made with [`create_peer`] on first use.
///
/// For loopback benchmarks, demos and tests: the hood's key lies next to its
/// certificate and its peers, so this is no way to keep a real hood.
///
/// ```
/// let hood = partybus_pki::TempHood::new("demo", 1)?;
/// let alice = hood.peer("alice")?; // demo.alice.crt and demo.alice.key
/// assert_eq!(hood.peer("alice")?, alice); // made once
/// let me = hood.identity("alice")?;
/// assert_eq!(me.name(), "alice");
/// # Ok::<(), partybus_pki::PkiError>(())
/// ```
#[derive(Debug)]
pub struct TempHood {
    dir: tempfile::TempDir,
    name: String,
    days: u32,
    hood: Hood,
    /// Peers made so far.
    peers: Mutex<HashSet<String>>,
}

impl TempHood {
    /// Creates hood `name`, valid for `days`, in a new folder under the
    /// system's temporary directory (named `partybus-NAME-...`).
    pub fn new(name: &str, days: u32) -> Result<TempHood, PkiError> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("partybus-{name}-"))
            .tempdir()
            .map_err(|source| PkiError::Write { path: std::env::temp_dir(), source })?;
        let files = create_hood(name, dir.path(), days)?;
        let hood = Hood::load(&files.cert)?;
        Ok(TempHood { dir, name: name.to_owned(), days, hood, peers: Mutex::new(HashSet::new()) })
    }

    /// The hood's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folder holding the hood's and the peers' files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `file` in [`TempHood::dir`].
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir().join(file)
    }

    /// The hood, loaded.
    pub fn hood(&self) -> &Hood {
        &self.hood
    }

    /// The hood's certificate `NAME.crt` and key `NAME.key`.
    pub fn files(&self) -> CreatedFiles {
        CreatedFiles { cert: self.path(&format!("{}.crt", self.name)), key: self.path(&format!("{}.key", self.name)) }
    }

    /// The certificate and key of peer `name` (valid as long as the hood),
    /// made on the first call for that name.
    pub fn peer(&self, name: &str) -> Result<CreatedFiles, PkiError> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.contains(name) {
            let file = |ext: &str| self.path(&format!("{}.{name}.{ext}", self.name));
            return Ok(CreatedFiles { cert: file("crt"), key: file("key") });
        }
        let files = create_peer(&self.name, name, self.dir(), self.days)?;
        peers.insert(name.to_owned());
        Ok(files)
    }

    /// Peer `name` ([`TempHood::peer`]) loaded as an [`Identity`] of this hood.
    pub fn identity(&self, name: &str) -> Result<Identity, PkiError> {
        let files = self.peer(name)?;
        Identity::load(&files.cert, &files.key, &self.hood)
    }
}
