//! A minimal IGD (HTTP + SOAP) on 127.0.0.1 for tests. It only *reports*
//! the external address it is given (a global one such as 8.8.8.8, because
//! the code under test ignores non-global ones); nothing is ever sent there.
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Default)]
struct State {
    calls: Vec<(String, String)>,
    permanent_only: bool,
    conflicts: u32,
}

pub struct FakeIgd {
    pub addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIgd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIgd {
    pub async fn start(ext_ip: &'static str) -> FakeIgd {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            // Bounded: at most 1000 requests per fake.
            for _ in 0..1000 {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                // Read headers + Content-Length body.
                loop {
                    let n = match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&tmp[..n]);
                    if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..h]).to_lowercase();
                        let cl = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                            .unwrap_or(0usize);
                        if buf.len() >= h + 4 + cl {
                            break;
                        }
                    }
                    if buf.len() > 1 << 20 {
                        break;
                    }
                }
                let req = String::from_utf8_lossy(&buf).to_string();
                let (status, body) = respond(&req, &st, ext_ip);
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        FakeIgd { addr, state, task }
    }

    pub fn count(&self, action: &str) -> usize {
        self.state.lock().unwrap().calls.iter().filter(|(a, _)| a == action).count()
    }

    pub fn last_add(&self) -> String {
        let st = self.state.lock().unwrap();
        st.calls.iter().rev().find(|(a, _)| a == "AddPortMapping").map(|c| c.1.clone()).unwrap_or_default()
    }

    pub fn set_permanent_only(&self) {
        self.state.lock().unwrap().permanent_only = true;
    }

    pub fn set_conflicts(&self, n: u32) {
        self.state.lock().unwrap().conflicts = n;
    }
}

fn soap_error(code: u32, desc: &str) -> (&'static str, String) {
    (
        "500 Internal Server Error",
        format!(
            r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>{code}</errorCode><errorDescription>{desc}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"#
        ),
    )
}

fn ok(action: &str, inner: &str) -> (&'static str, String) {
    (
        "200 OK",
        format!(
            r#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><u:{action}Response xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">{inner}</u:{action}Response></s:Body></s:Envelope>"#
        ),
    )
}

fn respond(req: &str, st: &Mutex<State>, ext_ip: &str) -> (&'static str, String) {
    if req.starts_with("GET /rootDesc.xml") {
        return ("200 OK", super::ROOT_DESC.to_string());
    }
    if req.starts_with("GET /WANIPCn.xml") {
        return ("200 OK", SCPD_FULL.to_string());
    }
    let action = req
        .lines()
        .find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("soapaction:").then(|| l.rsplit('#').next().unwrap_or("").trim_matches(['"', ' ']).to_string())
        })
        .unwrap_or_default();
    let action = match action.as_str() {
        "addportmapping" => "AddPortMapping",
        "deleteportmapping" => "DeletePortMapping",
        "getexternalipaddress" => "GetExternalIPAddress",
        _ => return ("404 Not Found", String::new()),
    };
    let mut s = st.lock().unwrap();
    s.calls.push((action.to_string(), req.to_string()));
    match action {
        "GetExternalIPAddress" => ok(action, &format!("<NewExternalIPAddress>{ext_ip}</NewExternalIPAddress>")),
        "AddPortMapping" => {
            if s.permanent_only && !req.contains("<NewLeaseDuration>0</NewLeaseDuration>") {
                return soap_error(725, "OnlyPermanentLeasesSupported");
            }
            if s.conflicts > 0 {
                s.conflicts -= 1;
                return soap_error(718, "ConflictInMappingEntry");
            }
            ok(action, "")
        }
        _ => ok(action, ""),
    }
}

const SCPD_FULL: &str = r#"<?xml version="1.0"?>
<scpd xmlns="urn:schemas-upnp-org:service-1-0"><actionList>
<action><name>AddPortMapping</name><argumentList>
<argument><name>NewRemoteHost</name><direction>in</direction></argument>
<argument><name>NewExternalPort</name><direction>in</direction></argument>
<argument><name>NewProtocol</name><direction>in</direction></argument>
<argument><name>NewInternalPort</name><direction>in</direction></argument>
<argument><name>NewInternalClient</name><direction>in</direction></argument>
<argument><name>NewEnabled</name><direction>in</direction></argument>
<argument><name>NewPortMappingDescription</name><direction>in</direction></argument>
<argument><name>NewLeaseDuration</name><direction>in</direction></argument>
</argumentList></action>
<action><name>DeletePortMapping</name><argumentList>
<argument><name>NewRemoteHost</name><direction>in</direction></argument>
<argument><name>NewExternalPort</name><direction>in</direction></argument>
<argument><name>NewProtocol</name><direction>in</direction></argument>
</argumentList></action>
<action><name>GetExternalIPAddress</name><argumentList>
<argument><name>NewExternalIPAddress</name><direction>out</direction></argument>
</argumentList></action>
</actionList></scpd>"#;
