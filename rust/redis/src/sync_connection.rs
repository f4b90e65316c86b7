//! The connections a plain call uses on its caller's thread. Over TCP or a Unix socket they
//! are our own, and the caller spins for an answer that comes within microseconds instead of
//! sleeping until it is there: waking a sleeping thread is most of a loopback round trip on
//! the machines measured (a raw round trip took 51 µs asleep, 22 µs spinning). Over TLS they
//! are the redis crate's. Commands, scripts, pipelines and replies are the redis crate's
//! either way (through `ConnectionLike`): only the bytes move here.
//!
//! Spinning is bounded, earned and polite: a caller spins at most [`SPIN`], only while the
//! budget's answers come within it (a server farther away is waited for asleep, costing no
//! CPU), and it yields its core on every turn, so whatever else is ready to run (the server,
//! other callers, other processes) runs first. Without the yield, 4 processes on 2 cores made
//! 28 k/s spinning against 59 k/s asleep; with it, 75 k/s.

use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::{Client, ConnectionAddr, ConnectionLike, Parser, ProtocolVersion, RedisResult, Value};

/// The longest a caller spins for an answer.
const SPIN: Duration = Duration::from_micros(100);

/// What the callers of one budget know about spinning for its answers.
#[derive(Debug, Default)]
pub struct Spin {
    /// The last answer measured came later than [`SPIN`] (at first: not known, so try).
    slow: AtomicBool,
}

/// A connection for plain calls: ours, or the redis crate's over TLS.
pub enum SyncConnection {
    Plain(Plain),
    Library(redis::Connection),
}

impl std::fmt::Debug for SyncConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SyncConnection::Plain(_) => "SyncConnection::Plain",
            SyncConnection::Library(_) => "SyncConnection::Library",
        })
    }
}

impl SyncConnection {
    /// Connects to `client`'s server within `timeout` (name resolution aside) and logs in as
    /// its URL says.
    pub fn open(client: &Client, timeout: Duration, spin: &Arc<Spin>) -> RedisResult<Self> {
        let info = client.get_connection_info();
        let settings = info.redis_settings();
        let stream = match info.addr() {
            _ if settings.protocol() != ProtocolVersion::RESP2 => None,
            ConnectionAddr::Tcp(host, port) => Some(Stream::Tcp(tcp(host, *port, timeout)?)),
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Some(Stream::Unix(UnixStream::connect(path)?)),
            _ => None,
        };
        let Some(stream) = stream else {
            return client
                .get_connection_with_timeout(timeout)
                .map(SyncConnection::Library);
        };
        let mut plain = SyncConnection::Plain(Plain {
            stream,
            parser: Parser::new(),
            open: true,
            db: settings.db(),
            spin: Arc::clone(spin),
        });
        plain.set_read_timeout(Some(timeout))?;
        plain.set_write_timeout(Some(timeout))?;
        if let Some(password) = settings.password() {
            let mut auth = redis::cmd("AUTH");
            if let Some(username) = settings.username() {
                auth.arg(username);
            }
            auth.arg(password).exec(&mut plain)?;
        }
        if settings.db() != 0 {
            redis::cmd("SELECT").arg(settings.db()).exec(&mut plain)?;
        }
        Ok(plain)
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match self {
            SyncConnection::Plain(plain) => Ok(plain.stream.set_read_timeout(timeout)?),
            SyncConnection::Library(library) => library.set_read_timeout(timeout),
        }
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> RedisResult<()> {
        match self {
            SyncConnection::Plain(plain) => Ok(plain.stream.set_write_timeout(timeout)?),
            SyncConnection::Library(library) => library.set_write_timeout(timeout),
        }
    }
}

/// Connects to the first of `host`'s addresses that answers within `timeout`.
fn tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let started = Instant::now();
    let mut failed = None;
    for address in (host, port).to_socket_addrs()? {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&address, left) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(error) => failed = Some(error),
        }
    }
    Err(failed.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "no address of the host answered in time",
        )
    }))
}

pub struct Plain {
    stream: Stream,
    parser: Parser,
    /// False once a read or write failed: the connection is then dropped.
    open: bool,
    db: i64,
    spin: Arc<Spin>,
}

enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_read_timeout(timeout),
            #[cfg(unix)]
            Stream::Unix(stream) => stream.set_read_timeout(timeout),
        }
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.set_write_timeout(timeout),
            #[cfg(unix)]
            Stream::Unix(stream) => stream.set_write_timeout(timeout),
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(stream) => stream.write_all(bytes),
            #[cfg(unix)]
            Stream::Unix(stream) => stream.write_all(bytes),
        }
    }

    /// Whether a byte (or the end, or an error) is there to read, without waiting for it.
    fn ready(&self) -> bool {
        let mut byte = [MaybeUninit::<u8>::uninit()];
        let socket = match self {
            Stream::Tcp(stream) => socket2::SockRef::from(stream),
            #[cfg(unix)]
            Stream::Unix(stream) => socket2::SockRef::from(stream),
        };
        match socket.recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Err(error) => error.kind() != io::ErrorKind::WouldBlock,
            Ok(_) => true,
        }
    }
}

impl Plain {
    /// Sends `bytes` and reads `count` replies.
    fn request(&mut self, bytes: &[u8], count: usize) -> RedisResult<Vec<Value>> {
        let answer = self.exchange(bytes, count);
        if matches!(&answer, Err(error) if error.is_io_error() || error.is_unrecoverable_error()) {
            // A reply that did not come, or came broken, would be read as the next one's.
            self.open = false;
        }
        answer
    }

    fn exchange(&mut self, bytes: &[u8], count: usize) -> RedisResult<Vec<Value>> {
        if !self.open {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
        }
        self.stream.write_all(bytes)?;
        let sent = Instant::now();
        let spun = self.spin_for_answer(sent);
        let mut replies = Vec::with_capacity(count);
        for _ in 0..count {
            replies.push(match &mut self.stream {
                Stream::Tcp(stream) => self.parser.parse_value(stream)?,
                #[cfg(unix)]
                Stream::Unix(stream) => self.parser.parse_value(stream)?,
            });
        }
        if !spun {
            self.spin
                .slow
                .store(sent.elapsed() > SPIN, Ordering::Relaxed);
        }
        Ok(replies)
    }

    /// Spins until the answer is there, yielding the core on every turn, while answers come
    /// soon, for [`SPIN`] at most; whether it spun (until the answer, or for too long).
    fn spin_for_answer(&self, sent: Instant) -> bool {
        if self.spin.slow.load(Ordering::Relaxed) {
            return false;
        }
        loop {
            if self.stream.ready() {
                return true;
            }
            if sent.elapsed() > SPIN {
                self.spin.slow.store(true, Ordering::Relaxed);
                return true;
            }
            std::thread::yield_now();
        }
    }
}

impl ConnectionLike for SyncConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            SyncConnection::Plain(plain) => Ok(plain.request(cmd, 1)?.remove(0)),
            SyncConnection::Library(library) => library.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match self {
            SyncConnection::Plain(plain) => {
                let mut replies = plain.request(cmd, offset + count)?;
                Ok(replies.split_off(offset))
            }
            SyncConnection::Library(library) => library.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            SyncConnection::Plain(plain) => plain.db,
            SyncConnection::Library(library) => library.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").exec(self).is_ok()
    }

    fn is_open(&self) -> bool {
        match self {
            SyncConnection::Plain(plain) => plain.open,
            SyncConnection::Library(library) => library.is_open(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// A stand-in server answering each PING after `delay` microseconds (the test sets it);
    /// it hangs up when the client sends QUIT.
    fn server(delay: Arc<AtomicU64>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buffer = [0; 256];
            loop {
                let read = stream.read(&mut buffer).unwrap_or(0);
                if read == 0 {
                    return;
                }
                seen.extend_from_slice(&buffer[..read]);
                if seen.windows(6).any(|w| w == b"QUIT\r\n") {
                    return;
                }
                while let Some(at) = seen.windows(6).position(|w| w == b"PING\r\n") {
                    seen.drain(..at + 6);
                    std::thread::sleep(Duration::from_micros(delay.load(Ordering::Relaxed)));
                    stream.write_all(b"+PONG\r\n").unwrap();
                }
            }
        });
        url
    }

    fn connect(url: &str, spin: &Arc<Spin>) -> SyncConnection {
        let client = Client::open(url).unwrap();
        let connection = SyncConnection::open(&client, Duration::from_secs(5), spin).unwrap();
        assert!(matches!(connection, SyncConnection::Plain(_)));
        connection
    }

    #[test]
    fn a_server_that_answers_late_is_waited_for_asleep_until_it_answers_soon() {
        let delay = Arc::new(AtomicU64::new(2_000));
        let spin = Arc::new(Spin::default());
        let mut connection = connect(&server(Arc::clone(&delay)), &spin);
        redis::cmd("PING").exec(&mut connection).unwrap();
        assert!(
            spin.slow.load(Ordering::Relaxed),
            "an answer after 2 ms is slow"
        );
        redis::cmd("PING").exec(&mut connection).unwrap();
        assert!(spin.slow.load(Ordering::Relaxed));
        delay.store(0, Ordering::Relaxed);
        // Asleep, a loopback answer comes within the spin's bound (within a few tries).
        let soon = (0..100).any(|_| {
            redis::cmd("PING").exec(&mut connection).unwrap();
            !spin.slow.load(Ordering::Relaxed)
        });
        assert!(soon, "answers at once are not slow");
    }

    #[test]
    fn a_connection_the_server_hung_up_on_is_closed_and_waits_no_more() {
        let spin = Arc::new(Spin::default());
        let mut connection = connect(&server(Arc::default()), &spin);
        redis::cmd("PING").exec(&mut connection).unwrap();
        let error = redis::cmd("QUIT").exec(&mut connection).unwrap_err();
        assert!(
            error.is_io_error() || error.is_unrecoverable_error(),
            "{error:?}"
        );
        assert!(!connection.is_open());
        assert!(redis::cmd("PING").exec(&mut connection).is_err());
    }
}
