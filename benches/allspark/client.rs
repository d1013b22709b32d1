//! A minimal HTTP/1.1 keep-alive client on a Unix socket (what dockerd does, without its overhead).

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// One keep-alive connection to the plugin socket.
pub struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    req: Vec<u8>,
}

impl Conn {
    pub fn connect(socket: &Path) -> io::Result<Conn> {
        Ok(Conn {
            stream: UnixStream::connect(socket)?,
            buf: Vec::with_capacity(64 * 1024),
            req: Vec::with_capacity(512),
        })
    }

    /// `POST /<call>` with a JSON body; returns the status and the body.
    pub fn call(&mut self, call: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.req.clear();
        write!(
            self.req,
            "POST /{call} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        self.req.extend_from_slice(body);
        self.stream.write_all(&self.req)?;
        self.read_response()
    }

    /// Like [`call`](Self::call), but an error unless the status is 200 and `Err` is empty.
    pub fn ok(&mut self, call: &str, body: &[u8]) -> io::Result<Vec<u8>> {
        let (status, body) = self.call(call, body)?;
        let text = String::from_utf8_lossy(&body);
        if status != 200 || text.contains("\"Err\":\"") && !text.contains("\"Err\":\"\"") {
            return Err(io::Error::other(format!(
                "/{call} answered {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        Ok(body)
    }

    fn read_response(&mut self) -> io::Result<(u16, Vec<u8>)> {
        self.buf.clear();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the plugin closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| io::Error::other("response head is not UTF-8"))?;
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| io::Error::other(format!("no Content-Length in {head:?}")))?;
        let total = head_end + len;
        while self.buf.len() < total {
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the plugin closed the connection mid-body",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok((status, self.buf[head_end..total].to_vec()))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
