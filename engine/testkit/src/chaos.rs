//! A fault-injecting TCP proxy for HTTP/1.1, between the engine and an origin. Each accepted
//! connection draws one fault from a seeded generator: refused (accepted, then closed before
//! a byte: the client sees its request fail, not ECONNREFUSED),
//! a 503 storm reply, or a forwarded connection whose response stream is reset, stalled past
//! the engine's stall timeout, truncated, slowed to a drip, or has one byte flipped. It works
//! on bytes, below HTTP, so it hits heads, chunk framing and bodies alike.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Rng;

/// How often each fault is drawn, per connection, in percent; the rest pass untouched.
#[derive(Debug, Clone)]
pub struct Mix {
    pub refuse: u32,
    pub storm: u32,
    pub reset: u32,
    pub stall: u32,
    pub truncate: u32,
    pub drip: u32,
    pub flip: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Self {
            refuse: 5,
            storm: 8,
            reset: 12,
            stall: 4,
            truncate: 10,
            drip: 5,
            flip: 6,
        }
    }
}

/// What the proxy did, by fault.
#[derive(Debug, Default)]
pub struct Counts {
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    pub storms: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
    pub truncations: AtomicU64,
    pub drips: AtomicU64,
    pub flips: AtomicU64,
}

impl Counts {
    pub fn injected(&self) -> u64 {
        [
            &self.refused,
            &self.storms,
            &self.resets,
            &self.stalls,
            &self.truncations,
            &self.drips,
            &self.flips,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} connections, {} faults: {} refused, {} 503 storms, {} resets, {} stalls, {} truncations, {} drips, {} byte flips",
            g(&self.connections),
            self.injected(),
            g(&self.refused),
            g(&self.storms),
            g(&self.resets),
            g(&self.stalls),
            g(&self.truncations),
            g(&self.drips),
            g(&self.flips),
        )
    }
}

#[derive(Clone, Copy)]
enum Fault {
    None,
    Refuse,
    Storm,
    Reset(u64),
    Stall(u64),
    Truncate(u64),
    Drip,
    Flip(u64),
}

#[derive(Debug)]
pub struct Chaos {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    pub counts: Arc<Counts>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Chaos {
    /// Proxies 127.0.0.1:<free port> to `upstream`. `stall` is how long a stalled connection
    /// hangs before it is closed (longer than the engine's stall timeout).
    pub fn start(upstream: SocketAddr, seed: u64, mix: Mix, stall: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (stop, counts, conns) = (stop.clone(), counts.clone(), conns.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    counts.connections.fetch_add(1, Ordering::Relaxed);
                    let fault = mix.draw(&mut rng);
                    let (stop, counts) = (stop.clone(), counts.clone());
                    let handle = std::thread::spawn(move || {
                        serve(client, upstream, fault, stall, &stop, &counts);
                    });
                    let mut conns = conns.lock().unwrap();
                    conns.retain(|h| !h.is_finished());
                    conns.push(handle);
                }
            })
        };
        Self {
            addr,
            stop,
            counts,
            accept: Some(accept),
            conns,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Waits until no proxied connection is open (the client closed them all), up to `limit`.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if self.conns.lock().unwrap().iter().all(|h| h.is_finished()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops accepting and waits for every connection thread to end.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            h.join().unwrap();
        }
        for h in self.conns.lock().unwrap().drain(..) {
            h.join().unwrap();
        }
    }
}

impl Drop for Chaos {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(
    client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    stall: Duration,
    stop: &AtomicBool,
    counts: &Counts,
) {
    client.set_nonblocking(false).unwrap();
    let count = |c: &AtomicU64| {
        c.fetch_add(1, Ordering::Relaxed);
    };
    match fault {
        Fault::Refuse => {
            count(&counts.refused);
            return;
        }
        Fault::Storm => {
            count(&counts.storms);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            let mut c = &client;
            while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
                match c.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let _ = c.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let _ = server.set_read_timeout(Some(Duration::from_millis(100)));
    // Requests go up untouched; faults are on the response stream.
    let up = {
        let (mut from, mut to) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let mut sent = 0u64;
    let mut reset_now = false;
    let mut buf = vec![0u8; 64 * 1024];
    let mut down = &client;
    let mut from = &server;
    let mut counted = false;
    let mut once = |c: &AtomicU64| {
        if !counted {
            counted = true;
            c.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        let chunk = &mut buf[..n];
        let end = sent + n as u64;
        match fault {
            Fault::Reset(at) | Fault::Truncate(at) | Fault::Stall(at) if end > at => {
                let keep = (at - sent) as usize;
                let _ = down.write_all(&chunk[..keep]);
                match fault {
                    Fault::Reset(_) => {
                        once(&counts.resets);
                        reset_now = true;
                    }
                    Fault::Stall(_) => {
                        once(&counts.stalls);
                        let until = std::time::Instant::now() + stall;
                        while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    _ => once(&counts.truncations),
                }
                break;
            }
            Fault::Flip(at) if (sent..end).contains(&at) => {
                once(&counts.flips);
                chunk[(at - sent) as usize] ^= 0x20;
                if down.write_all(chunk).is_err() {
                    break;
                }
            }
            Fault::Drip => {
                once(&counts.drips);
                let mut failed = false;
                for piece in chunk.chunks(4096) {
                    if down.write_all(piece).is_err() || stop.load(Ordering::Relaxed) {
                        failed = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                if failed {
                    break;
                }
            }
            _ => {
                if down.write_all(chunk).is_err() {
                    break;
                }
            }
        }
        sent = end;
    }
    let _ = server.shutdown(Shutdown::Both);
    if reset_now {
        // SO_LINGER 0 and no FIN: the last close sends a TCP reset. Shutting the read side
        // ends the request copier, which holds the other handle of the socket.
        let _ = rustix::net::sockopt::set_socket_linger(&client, Some(Duration::ZERO));
        let _ = client.shutdown(Shutdown::Read);
    } else {
        let _ = client.shutdown(Shutdown::Both);
    }
    let _ = up.join();
}

impl Mix {
    /// Draws the fault of one connection.
    fn draw(&self, rng: &mut Rng) -> Fault {
        let roll = (rng.next() % 100) as u32;
        // Offsets within the first 768 KiB of the response stream: heads and bodies of the
        // first few ranges a connection carries.
        let at = rng.next() % (768 * 1024);
        let mut edge = 0;
        let mut pick = |weight: u32| {
            edge += weight;
            roll < edge
        };
        if pick(self.refuse) {
            Fault::Refuse
        } else if pick(self.storm) {
            Fault::Storm
        } else if pick(self.reset) {
            Fault::Reset(at)
        } else if pick(self.stall) {
            Fault::Stall(at)
        } else if pick(self.truncate) {
            Fault::Truncate(at)
        } else if pick(self.drip) {
            Fault::Drip
        } else if pick(self.flip) {
            Fault::Flip(at)
        } else {
            Fault::None
        }
    }
}
