//! The server on a real socket: a panicking handler.
use super::*;
use std::io::{Read, Write};

struct Panics;

impl Handler for Panics {
    fn handle(&self, call: &str, _body: &[u8]) -> Reply {
        if call == "Boom" {
            panic!("a bug in a handler");
        }
        Reply::ok(b"{}".to_vec())
    }
}

fn call(socket: &Path, call: &str) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST /{call} HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .expect("a reply before the timeout");
    reply
}

#[test]
fn a_panicking_handler_gets_a_500_and_the_server_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let server = Server::new(bind(&socket).unwrap());
    let (stopper, shared) = (server.stopper(), server.shared.clone());
    let serving = std::thread::spawn(move || server.serve(Arc::new(Panics)));
    let reply = call(&socket, "Boom");
    assert!(reply.starts_with("HTTP/1.1 500"), "{reply}");
    assert!(reply.contains("failed inside Boom"), "{reply}");
    assert!(call(&socket, "Plugin.Activate").starts_with("HTTP/1.1 200"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shared.conns().open.is_empty() {
        assert!(Instant::now() < deadline, "a connection stayed registered");
        std::thread::sleep(Duration::from_millis(10));
    }
    stopper.stop();
    serving.join().unwrap();
}
