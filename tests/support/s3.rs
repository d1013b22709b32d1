//! An S3 endpoint on 127.0.0.1 for the remote tests: `moto_server` on a free port (killed on drop), bucket-side helpers through boto3, and a TCP proxy that can die mid-transfer.
//!
//! [`require_s3`] mirrors `require_docker`: without `moto_server`, boto3 or the
//! `age` CLI the test skips loudly, or fails when `ALLSPARK_REQUIRE_DOCKER` is
//! set (CI installs them in `.ci/run`).
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::common::{docker_required, wait_until};

/// The bucket of the tests.
pub const BUCKET: &str = "allspark-offsite";

/// Bucket-side helpers (boto3, installed with moto[server]): what an operator would do with their S3 tools.
pub const HELPER: &str = r#"
import sys, boto3
ep, cmd, args = sys.argv[1], sys.argv[2], sys.argv[3:]
def client(key='test', secret='test'):
    return boto3.client('s3', endpoint_url=ep, region_name='us-east-1',
                        aws_access_key_id=key, aws_secret_access_key=secret)
if cmd == 'mkbucket':
    client().create_bucket(Bucket=args[0])
elif cmd == 'setup-auth':
    # moto enforces IAM only after INITIAL_NO_AUTH_ACTION_COUNT requests: these four.
    iam = boto3.client('iam', endpoint_url=ep, region_name='us-east-1',
                       aws_access_key_id='x', aws_secret_access_key='y')
    iam.create_user(UserName='allspark')
    k = iam.create_access_key(UserName='allspark')['AccessKey']
    iam.put_user_policy(UserName='allspark', PolicyName='s3', PolicyDocument=
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}')
    client(k['AccessKeyId'], k['SecretAccessKey']).create_bucket(Bucket=args[0])
    print(k['AccessKeyId'])
elif cmd == 'ls':
    p = client().get_paginator('list_objects_v2')
    for page in p.paginate(Bucket=args[0], Prefix=args[1]):
        for o in page.get('Contents', []):
            print('%s\t%d' % (o['Key'], o['Size']))
elif cmd == 'get':
    client().download_file(args[0], args[1], args[2])
elif cmd == 'put':
    client().upload_file(args[2], args[0], args[1])
elif cmd == 'grep':
    c = client(); n = 0; hits = []
    for page in c.get_paginator('list_objects_v2').paginate(Bucket=args[0], Prefix=args[1]):
        for o in page.get('Contents', []):
            n += 1
            body = c.get_object(Bucket=args[0], Key=o['Key'])['Body'].read()
            if args[2].encode() in body:
                hits.append(o['Key'])
    print('objects=%d hits=%s' % (n, ','.join(hits)))
"#;

/// True when the S3 endpoint and the age CLI can be had; otherwise skip loudly (or fail under ALLSPARK_REQUIRE_DOCKER, as CI sets).
pub fn require_s3() -> bool {
    let ok = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let missing: Vec<&str> = [
        ("moto_server", ok("moto_server", &["--help"])),
        ("python3 boto3", ok("python3", &["-c", "import boto3"])),
        ("age", ok("age", &["--version"])),
        ("age-keygen", ok("age-keygen", &["--version"])),
    ]
    .into_iter()
    .filter(|(_, there)| !there)
    .map(|(n, _)| n)
    .collect();
    if missing.is_empty() {
        return true;
    }
    let test = std::thread::current().name().unwrap_or("?").to_string();
    if docker_required() {
        panic!(
            "ALLSPARK_REQUIRE_DOCKER is set but {} missing: {test} cannot run. \
             Install them (`pip install 'moto[server]'`, `apt-get install age`) or unset ALLSPARK_REQUIRE_DOCKER to skip.",
            missing.join(", ")
        );
    }
    let bar = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\nSKIPPED: {test}: {} not installed.\nThis S3 test did NOT run. \
         `pip install 'moto[server]'` and `apt-get install age`, or set ALLSPARK_REQUIRE_DOCKER=1 \
         to make this a failure (CI does).\n{bar}\n",
        missing.join(", ")
    );
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto S3 server on a free port of 127.0.0.1, in its own process group, killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Moto {
    /// `auth_after`: enforce IAM credentials after that many requests (see `setup-auth`).
    pub fn start(auth_after: Option<u32>) -> Moto {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("s3.py"), HELPER).unwrap();
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(dir.path().join("moto.log")).unwrap(),
            ))
            .process_group(0);
        if let Some(n) = auth_after {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd.spawn().expect("start moto_server");
        let m = Moto { child, port, dir };
        wait_until("moto_server to answer", Duration::from_secs(60), || {
            TcpStream::connect(("127.0.0.1", port))
                .and_then(|mut s| {
                    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                    let mut b = [0u8; 12];
                    s.read_exact(&mut b)?;
                    Ok(b.starts_with(b"HTTP/1."))
                })
                .unwrap_or(false)
        });
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Run the bucket-side helper; its stdout.
    pub fn s3(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(self.dir.path().join("s3.py"))
            .arg(self.endpoint())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "s3 helper {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Object keys under a prefix, with their sizes.
    pub fn keys(&self, prefix: &str) -> Vec<(String, u64)> {
        self.s3(&["ls", BUCKET, prefix])
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, s)| (k.to_string(), s.parse().unwrap()))
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// A TCP proxy in front of the endpoint that can die: after `cut_after` bytes went upstream it
/// drops every connection and stops listening (connections are refused), as a stopped endpoint.
pub struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    listener: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(port: u16, upstream: u16, cut_after: Option<u64>) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (s, c) = (stop.clone(), cut.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        {
                            let mut l = conns.lock().unwrap();
                            l.push(client.try_clone().unwrap());
                            l.push(up.try_clone().unwrap());
                        }
                        let kill_all = {
                            let (conns, s, c) = (conns.clone(), s.clone(), c.clone());
                            move || {
                                c.store(true, Ordering::SeqCst);
                                s.store(true, Ordering::SeqCst);
                                for t in conns.lock().unwrap().iter() {
                                    let _ = t.shutdown(std::net::Shutdown::Both);
                                }
                            }
                        };
                        let counter = sent.clone();
                        let (c1, u1) = (client.try_clone().unwrap(), up.try_clone().unwrap());
                        std::thread::spawn(move || {
                            pump(c1, u1, |n| {
                                let total = counter.fetch_add(n, Ordering::SeqCst) + n;
                                if cut_after.is_some_and(|limit| total > limit) {
                                    kill_all();
                                    return false;
                                }
                                true
                            })
                        });
                        std::thread::spawn(move || pump(up, client, |_| true));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => break,
                }
            }
            for t in conns.lock().unwrap().iter() {
                let _ = t.shutdown(std::net::Shutdown::Both);
            }
        });
        Proxy {
            port,
            stop,
            cut,
            listener: Some(handle),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn was_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
    }
}

/// Copy `from` to `to`; `more(n)` after each chunk says whether to go on.
fn pump(mut from: TcpStream, mut to: TcpStream, mut more: impl FnMut(u64) -> bool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if !more(n as u64) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// The secret key of the tests' credentials files: no output may contain it.
pub const SECRET: &str = "test-secret-never-printed-41d8";

/// An age key pair (`age-keygen`) and a root-only credentials file, in a scratch directory.
pub struct Keys {
    pub dir: tempfile::TempDir,
}

impl Keys {
    pub fn new() -> Keys {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.txt");
        let out = Command::new("age-keygen")
            .arg("-o")
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let creds = dir.path().join("creds");
        fs::write(
            &creds,
            format!("aws_access_key_id=AKIATESTKEY\naws_secret_access_key={SECRET}\n"),
        )
        .unwrap();
        fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).unwrap();
        Keys { dir }
    }
    pub fn key(&self) -> std::path::PathBuf {
        self.dir.path().join("key.txt")
    }
    pub fn creds(&self) -> std::path::PathBuf {
        self.dir.path().join("creds")
    }
    /// The `age1…` public key age-keygen wrote as a comment.
    pub fn public_key(&self) -> String {
        fs::read_to_string(self.key())
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("age-keygen writes the public key as a comment")
            .to_string()
    }
    /// The arguments of `allspark remote add offsite` for `endpoint` (prefix hosts/alpha).
    pub fn add_args(&self, endpoint: &str) -> Vec<String> {
        [
            "remote",
            "add",
            "offsite",
            "--endpoint",
            endpoint,
            "--bucket",
            BUCKET,
            "--prefix",
            "hosts/alpha",
            "--path-style",
            "--credentials-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            self.creds().display().to_string(),
            "--age-recipient".to_string(),
            self.public_key(),
        ])
        .collect()
    }
}
