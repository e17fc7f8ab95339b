//! A network lab made of Linux network namespaces, for multi-host tests.
//!
//! A [`Lab`] creates namespaces (hosts, routers, a "switch"), bridges, veth
//! links, addresses, routes and nftables rulesets, runs programs inside the
//! namespaces, and removes everything again when dropped: every process still
//! running in one of its namespaces is killed and every namespace deleted.
//! Namespaces left over by crashed runs (same prefix, owning process gone) are
//! removed when a new lab starts.
//!
//! The lab needs root (with `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`), `ip` and
//! `nft`. The rule for every lab test in the tree, decided when the tests are
//! built (`integration/build.rs`, the one place that reads `PARTYBUS_LAB`):
//!
//! - where the lab cannot run (not root, no `ip` or `nft`), the build sets
//!   `cfg(partybus_no_lab)` and warns, and each lab test carries
//!   `#[cfg_attr(partybus_no_lab, ignore = "...")]`: the runner reports it as
//!   *ignored*, with what it needs as the reason. `PARTYBUS_LAB=skip` does
//!   the same on any machine;
//! - everywhere else, and always under `PARTYBUS_LAB=required` (what `.ci/run`
//!   sets), it runs, and then it either runs its lab completely or **fails**,
//!   naming what is missing ([`Lab::require`], [`require_program`],
//!   [`unavailable`]). A lab test never passes without having run.
//!
//! ```no_run
//! use std::time::Duration;
//! use partybus_integration::Lab;
//!
//! #[test]
//! #[cfg_attr(partybus_no_lab, ignore = "network lab (needs root, ip, nft, ping) unavailable here or PARTYBUS_LAB=skip; PARTYBUS_LAB=required runs it")]
//! fn two_hosts() {
//!     let lab = Lab::require("lan");
//!     let lan = lab.bridge("lan0").unwrap();
//!     let a = lab.host("a", &lan, "198.18.0.11/24").unwrap();
//!     let b = lab.host("b", &lan, "198.18.0.12/24").unwrap();
//!     lab.exec(&a, ["ping", "-c1", "-W2", "198.18.0.12"]).unwrap();
//!     let mut p = lab.spawn(&b, "sh", ["-c", "echo ready; sleep 30"]).unwrap();
//!     p.wait_for_line(|l| l == "ready", Duration::from_secs(5)).unwrap();
//! } // p is killed, then every namespace of the lab is deleted
//! ```
//!
//! Addresses: use 198.18.0.0/15 for LANs and 203.0.113.0/24 or
//! 198.51.100.0/24 as "public"; a lab namespace has no route out of the lab.
//!
//! Interface names are at most 15 bytes: veth pairs are created directly
//! between lab namespaces (`ip -n A link add X type veth peer name Y netns B`),
//! so names only have to be unique inside one namespace, never in the root
//! namespace, and parallel labs cannot collide.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub use crate::prereq::which;

/// Environment variable: if set, the lab directory (stdout/stderr of every
/// process, rulesets, certificates) is kept even when the test passes.
pub const KEEP_ENV: &str = "PARTYBUS_LAB_KEEP";

/// All lab namespace names start with this.
const NS_PREFIX: &str = "pb-";

/// Labs created by this process (for unique names).
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Timeout for one `ip`/`nft`/`sysctl` command run by the lab itself.
const CMD_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines kept per process output stream (older ones are dropped).
const MAX_LINES: usize = 200_000;

/// Why a lab cannot be created.
#[derive(Debug)]
pub enum LabError {
    /// A prerequisite is missing (not root, no `ip`/`nft`, no namespaces).
    Unavailable(String),
    /// Prerequisites are met but the lab could not be set up.
    Failed(anyhow::Error),
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Unavailable(why) => write!(f, "lab unavailable: {why}"),
            LabError::Failed(e) => write!(f, "lab setup failed: {e:#}"),
        }
    }
}

impl std::error::Error for LabError {}

/// Fail the calling lab test because `why` (a missing prerequisite): a lab
/// test that cannot run fails, it never passes without running. The message
/// says how to provide the prerequisite or leave lab tests out.
#[track_caller]
pub fn unavailable(why: &str) -> ! {
    panic!(
        "network lab cannot run: {why}.\n\
         This lab test was built to run (PARTYBUS_LAB=required, or the build found root, ip and nft here), so it fails \
         instead of passing without running. Run it as root with the packages `.ci/run` installs (iproute2, nftables, \
         iputils-ping, conntrack, miniupnpd, miniupnpd-nftables), or leave the lab tests out: with PARTYBUS_LAB=skip \
         the runner reports them as ignored."
    )
}

/// `prog`'s path, or fail the calling lab test ([`unavailable`]) naming the
/// Debian `package` that provides it.
#[track_caller]
pub fn require_program(prog: &str, package: &str) -> PathBuf {
    match which(prog) {
        Some(p) => p,
        None => unavailable(&format!("`{prog}` is not installed (Debian package `{package}`)")),
    }
}

/// A network namespace of the lab. Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ns {
    /// Full namespace name (for `ip netns exec`).
    pub name: String,
    /// The short name given by the test ("a", "router", "switch").
    pub short: String,
}

impl Ns {
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for Ns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short)
    }
}

/// A Linux bridge (an L2 switch) inside some lab namespace.
#[derive(Clone, Debug)]
pub struct Bridge {
    /// Namespace that holds the bridge (the lab's "switch" namespace, or a router).
    pub ns: Ns,
    /// Interface name of the bridge (<= 15 bytes).
    pub name: String,
}

/// A network lab; see the module documentation. Dropping it kills every
/// process in its namespaces and deletes them.
pub struct Lab {
    /// `pb-<prefix>-<pid>-<n>`; every namespace name starts with it.
    run: String,
    namespaces: Mutex<Vec<Ns>>,
    switch: Mutex<Option<Ns>>,
    /// Counter for interface names that must be unique in a namespace.
    ifcounter: AtomicU32,
    dir: Mutex<Option<tempfile::TempDir>>,
    dir_path: PathBuf,
}

impl fmt::Debug for Lab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lab").field("run", &self.run).field("dir", &self.dir_path).finish()
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Short name part: keep `[a-z0-9]`, lowercased, at most `max` bytes.
fn short_part(s: &str, max: usize) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).take(max).collect()
}

impl Lab {
    /// Check prerequisites, clean up leftovers of crashed runs and create an
    /// empty lab. `prefix` names the test (a few letters; `[a-z0-9]` are kept).
    ///
    /// A missing prerequisite gives [`LabError::Unavailable`].
    pub fn new(prefix: &str) -> Result<Lab, LabError> {
        let missing = LabError::Unavailable;
        // The same check as the build's (integration/build.rs).
        let lacking = crate::prereq::missing();
        if !lacking.is_empty() {
            return Err(missing(format!("this machine lacks {}", lacking.join(", "))));
        }
        let prefix = short_part(prefix, 8);
        let prefix = if prefix.is_empty() { "lab".to_owned() } else { prefix };
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let run = format!("{NS_PREFIX}{prefix}-{}-{n}", std::process::id());

        cleanup_leftovers(&format!("{NS_PREFIX}{prefix}-"));

        // Can we create a namespace at all (seccomp, containers without CAP_SYS_ADMIN)?
        let probe = format!("{run}-probe");
        match run_cmd(Command::new("ip").args(["netns", "add", &probe]), CMD_TIMEOUT) {
            Ok(o) if o.status.success() => {
                let _ = run_cmd(Command::new("ip").args(["netns", "del", &probe]), CMD_TIMEOUT);
            }
            Ok(o) => {
                let _ = run_cmd(Command::new("ip").args(["netns", "del", &probe]), CMD_TIMEOUT);
                return Err(missing(format!("cannot create a network namespace: {}", String::from_utf8_lossy(&o.stderr).trim())));
            }
            Err(e) => return Err(missing(format!("cannot run `ip netns add`: {e:#}"))),
        }

        let dir = tempfile::Builder::new()
            .prefix(&format!("{run}-"))
            .tempdir()
            .map_err(|e| LabError::Failed(anyhow!("cannot create the lab directory: {e}")))?;
        let dir_path = dir.path().to_owned();
        Ok(Lab {
            run,
            namespaces: Mutex::new(Vec::new()),
            switch: Mutex::new(None),
            ifcounter: AtomicU32::new(0),
            dir: Mutex::new(Some(dir)),
            dir_path,
        })
    }

    /// [`Lab::new`] for a lab test: fails the test ([`unavailable`]) when a
    /// prerequisite is missing, or with the error when the setup fails.
    #[track_caller]
    pub fn require(prefix: &str) -> Lab {
        match Lab::new(prefix) {
            Ok(lab) => lab,
            Err(LabError::Unavailable(why)) => unavailable(&why),
            Err(e @ LabError::Failed(_)) => panic!("{e}"),
        }
    }

    /// A directory for the test's files (certificates, configs, logs). It is
    /// removed with the lab, except when the thread is panicking (a failing
    /// test) or `PARTYBUS_LAB_KEEP` is set: then it is kept and its path printed.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// The unique name prefix of this lab's namespaces.
    pub fn run_name(&self) -> &str {
        &self.run
    }

    /// Create a namespace: `lo` up, IPv6 duplicate address detection off (so
    /// link-local addresses are usable at once), no routes but the connected ones.
    pub fn namespace(&self, short: &str) -> Result<Ns> {
        let s = short_part(short, 12);
        if s.is_empty() {
            bail!("namespace name {short:?} has no [a-z0-9]");
        }
        let ns = Ns { name: format!("{}-{s}", self.run), short: short.to_owned() };
        if self.namespaces.lock().unwrap().iter().any(|n| n.name == ns.name) {
            bail!("namespace {short:?} exists already in this lab");
        }
        ip(&["netns", "add", &ns.name])?;
        self.namespaces.lock().unwrap().push(ns.clone());
        self.ip(&ns, &["link", "set", "lo", "up"])?;
        // Before any interface exists, so every interface inherits it.
        for key in ["net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"] {
            self.sysctl(&ns, key, "0")?;
        }
        Ok(ns)
    }

    /// A namespace that forwards packets (IPv4 and IPv6): a router. Add its
    /// links with [`Lab::link`] / [`Lab::attach`], rules with [`Lab::nft`].
    pub fn router(&self, short: &str) -> Result<Ns> {
        let ns = self.namespace(short)?;
        self.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        self.sysctl(&ns, "net.ipv6.conf.all.forwarding", "1")?;
        Ok(ns)
    }

    /// The lab's switch namespace (created on first use); it holds the bridges
    /// made by [`Lab::bridge`] and has no addresses of its own.
    pub fn switch(&self) -> Result<Ns> {
        let mut sw = self.switch.lock().unwrap();
        if let Some(ns) = sw.as_ref() {
            return Ok(ns.clone());
        }
        let ns = self.namespace("sw")?;
        self.no_bridge_netfilter(&ns)?;
        *sw = Some(ns.clone());
        Ok(ns)
    }

    /// A bridge (a LAN segment) in the switch namespace. `name` is the
    /// bridge's interface name (<= 15 bytes, unique in the lab).
    pub fn bridge(&self, name: &str) -> Result<Bridge> {
        let sw = self.switch()?;
        self.bridge_in(&sw, name)
    }

    /// A bridge inside `ns` (for example a router's LAN side; give it an
    /// address with [`Lab::addr`]). Bridged traffic bypasses the ip/ip6
    /// nftables families of `ns` (`bridge-nf-call-*` = 0). Multicast snooping
    /// is off so multicast (mDNS) is flooded to every port; STP is off and
    /// ports forward at once.
    pub fn bridge_in(&self, ns: &Ns, name: &str) -> Result<Bridge> {
        check_ifname(name)?;
        self.no_bridge_netfilter(ns)?;
        self.ip(ns, &["link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"])?;
        self.ip(ns, &["link", "set", name, "up"])?;
        Ok(Bridge { ns: ns.clone(), name: name.to_owned() })
    }

    fn no_bridge_netfilter(&self, ns: &Ns) -> Result<()> {
        for key in ["net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.bridge.bridge-nf-call-arptables"] {
            // Absent without br_netfilter: then there is nothing to turn off.
            if self.sysctl_path_exists(ns, key) {
                self.sysctl(ns, key, "0")?;
            }
        }
        Ok(())
    }

    fn sysctl_path_exists(&self, ns: &Ns, key: &str) -> bool {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec_unchecked(ns, ["test", "-e", &path]).map(|o| o.status.success()).unwrap_or(false)
    }

    /// A host: a new namespace with interface `eth0` plugged into `bridge`,
    /// holding address `cidr` (e.g. "198.18.0.11/24"; IPv6 gets `nodad`).
    /// Add a default route with [`Lab::route`] if the LAN has a router.
    pub fn host(&self, short: &str, bridge: &Bridge, cidr: &str) -> Result<Ns> {
        let ns = self.namespace(short)?;
        self.attach(&ns, "eth0", bridge, Some(cidr))?;
        Ok(ns)
    }

    /// Plug a new interface `ifname` of `ns` into `bridge` (veth pair; the
    /// bridge side gets a generated name), set it up, and add `cidr` if given.
    pub fn attach(&self, ns: &Ns, ifname: &str, bridge: &Bridge, cidr: Option<&str>) -> Result<()> {
        check_ifname(ifname)?;
        let port = format!("p{}", self.ifcounter.fetch_add(1, Ordering::SeqCst));
        self.ip(ns, &["link", "add", ifname, "type", "veth", "peer", "name", &port, "netns", &bridge.ns.name])?;
        self.ip(&bridge.ns, &["link", "set", &port, "master", &bridge.name])?;
        self.ip(&bridge.ns, &["link", "set", &port, "up"])?;
        if let Some(cidr) = cidr {
            self.addr(ns, ifname, cidr)?;
        }
        self.ip(ns, &["link", "set", ifname, "up"])?;
        Ok(())
    }

    /// A point-to-point veth link between `a` (interface `if_a`) and `b`
    /// (interface `if_b`), both up, without addresses.
    pub fn link(&self, a: &Ns, if_a: &str, b: &Ns, if_b: &str) -> Result<()> {
        check_ifname(if_a)?;
        check_ifname(if_b)?;
        self.ip(a, &["link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", &b.name])?;
        self.ip(a, &["link", "set", if_a, "up"])?;
        self.ip(b, &["link", "set", if_b, "up"])?;
        Ok(())
    }

    /// Add an address (`198.18.0.1/24`, `fd00::1/64`) to an interface.
    pub fn addr(&self, ns: &Ns, ifname: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            self.ip(ns, &["-6", "addr", "add", cidr, "dev", ifname, "nodad"])
        } else {
            self.ip(ns, &["addr", "add", cidr, "dev", ifname])
        }
    }

    /// Add a route: `lab.route(&host, "default", "198.18.0.1")`.
    pub fn route(&self, ns: &Ns, dest: &str, via: &str) -> Result<()> {
        let fam = if via.contains(':') { "-6" } else { "-4" };
        self.ip(ns, &[fam, "route", "add", dest, "via", via])
    }

    /// Set a sysctl inside `ns` (`net.ipv4.ip_forward`, ...).
    pub fn sysctl(&self, ns: &Ns, key: &str, value: &str) -> Result<()> {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.exec(ns, ["sh", "-c", &format!("echo {value} > {path}")]).with_context(|| format!("sysctl {key}={value} in {ns}"))?;
        Ok(())
    }

    /// Load an nftables ruleset (text as for `nft -f`) inside `ns`.
    pub fn nft(&self, ns: &Ns, ruleset: &str) -> Result<()> {
        let file = self.dir_path.join(format!("{}-{}.nft", ns.short, self.ifcounter.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&file, ruleset)?;
        self.exec(ns, [OsStr::new("nft"), OsStr::new("-f"), file.as_os_str()])
            .with_context(|| format!("nft ruleset in {ns}:\n{ruleset}"))?;
        Ok(())
    }

    /// Run `ip -n NS args...`, failing with its stderr on a non-zero exit.
    pub fn ip(&self, ns: &Ns, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", ns.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Run a command in `ns` to completion (at most 60 s) and return its
    /// output; a non-zero exit is an error that shows stdout and stderr.
    pub fn exec<I, S>(&self, ns: &Ns, cmd: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = cmd.into_iter().map(|s| s.as_ref().to_owned()).collect();
        let out = self.exec_unchecked(ns, &args)?;
        if !out.status.success() {
            bail!(
                "in {ns}: `{}` failed ({}):\n{}{}",
                args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out)
    }

    /// Like [`Lab::exec`] but returns the output whatever the exit status.
    pub fn exec_unchecked<I, S>(&self, ns: &Ns, cmd: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name]).args(cmd);
        run_cmd(&mut c, Duration::from_secs(60))
    }

    /// Start `program args...` in `ns`. Stdout lines are collected (see
    /// [`LabProcess::wait_for_line`]); stderr goes to a file in the lab
    /// directory whose tail is printed if the test fails.
    pub fn spawn<I, S>(&self, ns: &Ns, program: impl AsRef<OsStr>, args: I) -> Result<LabProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn_env(ns, program, args, std::iter::empty::<(&str, &str)>())
    }

    /// [`Lab::spawn`] with extra environment variables (e.g. `RUST_LOG`).
    pub fn spawn_env<I, S, E, K, V>(&self, ns: &Ns, program: impl AsRef<OsStr>, args: I, envs: E) -> Result<LabProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let program = program.as_ref();
        let base = Path::new(program).file_name().unwrap_or(program).to_string_lossy().into_owned();
        let label = format!("{}:{}#{}", ns.short, base, self.ifcounter.fetch_add(1, Ordering::SeqCst));
        let stderr_path = self.dir_path.join(format!("{}.stderr", label.replace([':', '#', '/'], "_")));
        let stderr = File::create(&stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(program)
            .args(args)
            .envs(envs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let child = c.spawn().with_context(|| format!("spawn {label}"))?;
        LabProcess::start(label, child, stderr_path)
    }

    /// Start a program and wait (at most `timeout`) for it to exit; its
    /// stdout lines are in the returned process ([`LabProcess::lines`]).
    /// Fails if it does not exit in time or exits non-zero.
    pub fn run<I, S>(&self, ns: &Ns, program: impl AsRef<OsStr>, args: I, timeout: Duration) -> Result<LabProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut p = self.spawn(ns, program, args)?;
        let status = p.wait_exit(timeout)?;
        if !status.success() {
            bail!("{} exited with {status}; stderr:\n{}", p.label(), p.stderr_tail(30));
        }
        Ok(p)
    }

    /// The namespaces created so far.
    pub fn namespaces(&self) -> Vec<Ns> {
        self.namespaces.lock().unwrap().clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let namespaces = std::mem::take(&mut *self.namespaces.lock().unwrap());
        // Kill everything first (a process in one namespace may hold a veth
        // peer of another), then delete the namespaces.
        for ns in &namespaces {
            kill_all_in(&ns.name);
        }
        for ns in namespaces.iter().rev() {
            if let Err(e) = ip(&["netns", "del", &ns.name]) {
                eprintln!("lab: cannot delete namespace {}: {e:#}", ns.name);
            }
        }
        let dir = self.dir.lock().unwrap().take();
        if let Some(dir) = dir {
            if std::thread::panicking() {
                let path = dir.keep();
                eprintln!("lab: test failed; lab files kept in {}", path.display());
            } else if std::env::var_os(KEEP_ENV).is_some() {
                let path = dir.keep();
                eprintln!("lab: {KEEP_ENV} is set; lab files kept in {}", path.display());
            }
        }
    }
}

/// Kill (SIGKILL) every process in namespace `ns` and wait briefly for them to go.
fn kill_all_in(ns: &str) {
    for _ in 0..20 {
        let Ok(out) = run_cmd(Command::new("ip").args(["netns", "pids", ns]), CMD_TIMEOUT) else { return };
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|p| p.chars().all(|c| c.is_ascii_digit()))
            .map(str::to_owned)
            .collect();
        if pids.is_empty() {
            return;
        }
        let _ = run_cmd(Command::new("kill").arg("-KILL").args(&pids), CMD_TIMEOUT);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Delete namespaces named `<prefix><pid>-...` whose process no longer exists.
fn cleanup_leftovers(prefix: &str) {
    let Ok(out) = run_cmd(Command::new("ip").args(["netns", "list"]), CMD_TIMEOUT) else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(prefix) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || pid_alive(pid) {
            continue;
        }
        eprintln!("lab: removing namespace {name} left over by a crashed run");
        kill_all_in(name);
        let _ = ip(&["netns", "del", name]);
    }
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) {
        bail!("bad interface name {name:?} (1..=15 bytes, no '/', ' ' or ':')");
    }
    Ok(())
}

/// Run `ip args...` in the root namespace (which only ever addresses lab namespaces).
fn ip(args: &[&str]) -> Result<()> {
    let out = run_cmd(Command::new("ip").args(args), CMD_TIMEOUT)?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Run a command with a time limit, collecting its output.
fn run_cmd(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = format!("{cmd:?}");
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("spawn {desc}"))?;
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

mod process;
pub use process::{tail_of_file, LabProcess};

#[cfg(test)]
mod tests;
