//! A NAT-PMP + PCP server on 127.0.0.x:5351 for tests: reports 8.8.8.8 as
//! its external address (nothing is ever sent there), keeps mappings
//! internal port → external port, assigns another port when the suggested
//! one is taken, and can "restart" (epoch 0, mappings gone).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;

#[derive(Default)]
struct State {
    maps: usize,
    mappings: HashMap<u16, u16>,
    taken: Vec<u16>,
    boot: Option<Instant>,
}

pub struct FakeServer {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start(ip: &str, pcp: bool, natpmp: bool) -> FakeServer {
        let sock = UdpSocket::bind((ip, 5351)).await.unwrap();
        // Starts at epoch 1000 (up for a while).
        let state = Arc::new(Mutex::new(State { boot: Some(Instant::now() - std::time::Duration::from_secs(1000)), ..Default::default() }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1100];
            // Bounded: at most 1000 requests per fake.
            for _ in 0..1000 {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
                let reply = answer(&st, &buf[..n], pcp, natpmp);
                if let Some(r) = reply {
                    let _ = sock.send_to(&r, from).await;
                }
            }
        });
        FakeServer { state, task }
    }

    pub fn take_port(&self, p: u16) {
        self.state.lock().unwrap().taken.push(p);
    }
    pub fn maps(&self) -> usize {
        self.state.lock().unwrap().maps
    }
    pub fn mapping(&self, internal: u16) -> Option<u16> {
        self.state.lock().unwrap().mappings.get(&internal).copied()
    }
    pub fn restart(&self) {
        let mut s = self.state.lock().unwrap();
        s.mappings.clear();
        s.taken.clear();
        s.boot = Some(Instant::now());
    }
}

fn answer(st: &Mutex<State>, b: &[u8], pcp: bool, natpmp: bool) -> Option<Vec<u8>> {
    let mut s = st.lock().unwrap();
    let epoch = s.boot.unwrap().elapsed().as_secs() as u32;
    let (version, op) = (*b.first()?, *b.get(1)?);
    let mut out = Vec::new();
    let assign = |s: &mut State, internal: u16, want: u16, life: u32| -> u16 {
        if life == 0 {
            s.mappings.remove(&internal);
            return 0;
        }
        s.maps += 1;
        if let Some(&p) = s.mappings.get(&internal) {
            return p;
        }
        let p = if want != 0 && !s.taken.contains(&want) { want } else { 40000 + s.taken.len() as u16 };
        s.taken.push(p);
        s.mappings.insert(internal, p);
        p
    };
    match version {
        0 if natpmp => {
            out.extend([0, 128 + op, 0, 0]);
            out.extend(epoch.to_be_bytes());
            match op {
                0 => out.extend(Ipv4Addr::new(8, 8, 8, 8).octets()),
                1 if b.len() >= 12 => {
                    let internal = u16::from_be_bytes([b[4], b[5]]);
                    let want = u16::from_be_bytes([b[6], b[7]]);
                    let life = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
                    let p = assign(&mut s, internal, want, life);
                    out.extend(internal.to_be_bytes());
                    out.extend(p.to_be_bytes());
                    out.extend(life.to_be_bytes());
                }
                _ => return None,
            }
        }
        // A PCP server without NAT-PMP: "unsupported version" in PCP form.
        0 => out.extend([2, 128 + op, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
        2 if pcp => {
            let life = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            out.extend([2, 0x80 | op, 0, 0]);
            out.extend(life.to_be_bytes());
            out.extend(epoch.to_be_bytes());
            out.extend([0u8; 12]);
            if op == 1 && b.len() >= 60 {
                let internal = u16::from_be_bytes([b[40], b[41]]);
                let want = u16::from_be_bytes([b[42], b[43]]);
                let p = assign(&mut s, internal, want, life);
                out.extend(&b[24..40]);
                out.extend(internal.to_be_bytes());
                out.extend(p.to_be_bytes());
                out.extend(Ipv4Addr::new(8, 8, 8, 8).to_ipv6_mapped().octets());
            }
        }
        // NAT-PMP only: PCP gets "unsupported version" in NAT-PMP form.
        _ => out.extend([0, 128 + op, 0, 1, 0, 0, 0, 0]),
    }
    Some(out)
}
