//! Whole HTTP responses as a server on 127.0.0.1 sends them, read by the engine's client
//! (head, then the body by Content-Length, chunked framing or until close): every input ends
//! in a response or an error, never a panic or a hang, and the client never hands out more
//! body bytes than the server sent. Inputs with a `Location` header are skipped: a redirect
//! would send the client to whatever host the input names.
#![no_main]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use modelpull::buf::AlignedBuf;
use modelpull::http::{Client, Request, Timeouts};

static RESPONSE: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// A server that answers every connection's first request with RESPONSE, then closes.
fn port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && request.len() < 8192 {
                    match conn.read(&mut byte) {
                        Ok(1) => request.push(byte[0]),
                        _ => break,
                    }
                }
                let response = RESPONSE.lock().unwrap().clone();
                let _ = conn.write_all(&response);
            }
        });
        port
    })
}

type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

thread_local! {
    static RUNTIME: std::cell::RefCell<Runtime> = std::cell::RefCell::new(
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap(),
    );
}

fuzz_target!(|data: &[u8]| {
    if data.windows(8).any(|w| w.eq_ignore_ascii_case(b"location")) {
        return;
    }
    *RESPONSE.lock().unwrap() = data.to_vec();
    static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let tls = TLS
        .get_or_init(|| modelpull::http::tls::client_config(None, &[]).unwrap())
        .clone();
    let url = url::Url::parse(&format!("http://127.0.0.1:{}/f.bin", port())).unwrap();
    RUNTIME.with_borrow_mut(|rt| {
        rt.block_on(async {
            let timeouts = Timeouts {
                connect: Duration::from_secs(2),
                stall: Duration::from_secs(2),
            };
            let client = Client::new(tls, timeouts, None);
            let request = Request {
                range: Some((0, 1 << 20)),
                ..Request::get(&url)
            };
            let Ok(mut response) = client.send(&request).await else {
                return;
            };
            let mut buf = AlignedBuf::new(64 * 1024);
            let mut total = 0;
            loop {
                buf.set_len(0);
                let (read, b) = response.read_body(buf, 64 * 1024).await;
                buf = b;
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
                assert!(
                    total <= data.len(),
                    "{total} body bytes from {} sent",
                    data.len()
                );
            }
        })
    });
});
