//! A real HTTP/1.1 origin on 127.0.0.1 for URL staging tests: fixed
//! routes, ETag revalidation, redirects, and counters of what it served,
//! so a test can prove a cache hit made no request or downloaded no body.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
pub enum Route {
    /// 200 with this body and an ETag derived from it; honours If-None-Match.
    Body(Vec<u8>),
    /// Like `Body`, but the test may change the body between requests (a
    /// file edited at its origin); the ETag follows the content.
    Mutable(Arc<Mutex<Vec<u8>>>),
    /// A redirect to this location.
    Redirect(String),
    /// This status with an empty body.
    Status(u16),
    /// Read the request, then never answer (a hung server).
    Hang,
    /// 200 with a body of this many bytes, sent one byte every 100 ms: no
    /// read ever waits long, but the whole takes ages.
    Drip(usize),
}

#[derive(Default)]
pub struct Counts {
    /// Requests per path.
    pub requests: HashMap<String, usize>,
    /// Responses that carried a body, per path.
    pub bodies: HashMap<String, usize>,
}

pub struct Origin {
    pub port: u16,
    counts: Arc<Mutex<Counts>>,
}

impl Origin {
    pub async fn start(routes: Vec<(&str, Route)>) -> Origin {
        let routes: Arc<HashMap<String, Route>> =
            Arc::new(routes.into_iter().map(|(p, r)| (p.to_owned(), r)).collect());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let served = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                let counts = served.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let if_none_match = head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("if-none-match")
                            .then(|| v.trim().to_owned())
                    });
                    *counts
                        .lock()
                        .unwrap()
                        .requests
                        .entry(path.clone())
                        .or_default() += 1;
                    if matches!(routes.get(&path), Some(Route::Hang)) {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        return;
                    }
                    if let Some(Route::Drip(len)) = routes.get(&path) {
                        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
                        let _ = socket.write_all(head.as_bytes()).await;
                        for _ in 0..*len {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            if socket.write_all(b"x").await.is_err() {
                                return;
                            }
                        }
                        return;
                    }
                    let mutable = match routes.get(&path) {
                        Some(Route::Mutable(body)) => {
                            Some(Route::Body(body.lock().unwrap().clone()))
                        }
                        _ => None,
                    };
                    let (status, headers, body) = match mutable.as_ref().or(routes.get(&path)) {
                        Some(Route::Body(body)) => {
                            let etag = format!("\"{:x}\"", content_tag(body));
                            if if_none_match.as_deref() == Some(etag.as_str()) {
                                ("304 Not Modified", format!("ETag: {etag}\r\n"), Vec::new())
                            } else {
                                *counts
                                    .lock()
                                    .unwrap()
                                    .bodies
                                    .entry(path.clone())
                                    .or_default() += 1;
                                ("200 OK", format!("ETag: {etag}\r\n"), body.clone())
                            }
                        }
                        Some(Route::Redirect(to)) => {
                            ("302 Found", format!("Location: {to}\r\n"), Vec::new())
                        }
                        Some(Route::Status(500)) => {
                            ("500 Internal Server Error", String::new(), Vec::new())
                        }
                        Some(
                            Route::Status(_) | Route::Hang | Route::Drip(_) | Route::Mutable(_),
                        )
                        | None => ("404 Not Found", String::new(), Vec::new()),
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.write_all(&body).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Origin { port, counts }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn requests(&self, path: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .requests
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn bodies(&self, path: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .bodies
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_requests(&self) -> usize {
        self.counts.lock().unwrap().requests.values().sum()
    }
}

/// An ETag for `body`: any change of content changes it.
fn content_tag(body: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    hasher.finish()
}
