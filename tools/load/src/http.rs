//! A minimal HTTP/1.1 client (one request per connection, `Connection: close`) for WHIP/WHEP
//! signaling and metrics. Plain `http://` only (the load tool runs next to the server).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read, in bytes. Default 1 MiB; bounds memory per request against a
/// hostile or broken server (an SDP answer is a few KiB).
pub const MAX_RESPONSE: usize = 1024 * 1024;
/// Deadline for one request (connect + send + full response). Default 15 s.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// Why an HTTP request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://host:port[/path]` with a numeric or resolvable host.
    #[error("bad URL {0:?}: expected http://HOST:PORT")]
    BadUrl(String),
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// No complete response before [`REQUEST_TIMEOUT`].
    #[error("request timed out")]
    Timeout,
    /// Response over [`MAX_RESPONSE`].
    #[error("response larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    /// Status line or headers unparseable.
    #[error("malformed HTTP response")]
    Malformed,
}

/// A parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (name, value) in order.
    pub headers: Vec<(String, String)>,
    /// Body (lossy UTF-8).
    pub body: String,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A base URL split into address and path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Server address.
    pub addr: SocketAddr,
    /// Host header value.
    pub host: String,
    /// Path prefix without trailing '/' (may be empty).
    pub prefix: String,
}

impl BaseUrl {
    /// Parse `http://host:port[/prefix]` (host resolved once here).
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = || HttpError::BadUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if hostport.is_empty() {
            return Err(bad());
        }
        let hp = if hostport.contains(':') {
            hostport.to_owned()
        } else {
            format!("{hostport}:80")
        };
        use std::net::ToSocketAddrs;
        let addr = hp
            .to_socket_addrs()
            .map_err(|_| bad())?
            .next()
            .ok_or_else(bad)?;
        Ok(Self {
            addr,
            host: hostport.to_owned(),
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }

    /// Resolve `path`: absolute paths ("/whep/r/1", as in a Location header) are used as
    /// they are, full `http://` URLs keep only their path.
    pub fn path(&self, path: &str) -> String {
        if let Some(rest) = path.strip_prefix("http://") {
            return rest
                .find('/')
                .map(|i| rest[i..].to_owned())
                .unwrap_or("/".into());
        }
        if path.starts_with('/') && !self.prefix.is_empty() && path.starts_with(&self.prefix) {
            return path.to_owned();
        }
        format!("{}{}", self.prefix, path)
    }
}

/// Parse a complete response buffer.
pub fn parse_response(raw: &[u8]) -> Result<Response, HttpError> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(HttpError::Malformed)?;
    let head = std::str::from_utf8(raw.get(..head_end).ok_or(HttpError::Malformed)?)
        .map_err(|_| HttpError::Malformed)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::Malformed)?;
    let mut f = status_line.split(' ');
    if !f.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(HttpError::Malformed);
    }
    let status: u16 = f
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed)?;
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l.split_once(':').ok_or(HttpError::Malformed)?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let body_raw = raw.get(head_end + 4..).unwrap_or(&[]);
    let resp = Response {
        status,
        headers,
        body: String::new(),
    };
    let body = match resp
        .header("content-length")
        .map(|v| v.parse::<usize>().map_err(|_| HttpError::Malformed))
    {
        Some(Ok(n)) => body_raw.get(..n).ok_or(HttpError::Malformed)?,
        Some(Err(e)) => return Err(e),
        None => body_raw,
    };
    Ok(Response {
        body: String::from_utf8_lossy(body).into_owned(),
        ..resp
    })
}

/// Send one request and read the whole response.
pub async fn request(
    base: &BaseUrl,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Response, HttpError> {
    let fut = async {
        let mut s = TcpStream::connect(base.addr).await?;
        s.set_nodelay(true)?;
        let mut req = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: ils-load\r\nContent-Length: {}\r\n",
            base.path(path),
            base.host,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::with_capacity(4096);
        let mut buf = [0u8; 8192];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if raw.len() + n > MAX_RESPONSE {
                return Err(HttpError::TooLarge);
            }
            raw.extend_from_slice(&buf[..n]);
        }
        parse_response(&raw)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| HttpError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &[u8] =
        b"HTTP/1.1 201 Created\r\nLocation: /whep/r/abc\r\nContent-Length: 5\r\n\r\nv=0\r\nxx";

    #[test]
    fn parses_responses() {
        let r = parse_response(OK).unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/whep/r/abc"));
        assert_eq!(r.body, "v=0\r\n");
        for n in 0..OK.len() - 7 {
            // every truncation before the full body is an error
            assert!(parse_response(&OK[..n]).is_err(), "truncation {n}");
        }
        assert!(parse_response(b"FTP 200 OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    #[test]
    fn urls() {
        let b = BaseUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(b.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(b.path("/whep/r"), "/whep/r");
        let p = BaseUrl::parse("http://127.0.0.1:9/api/").unwrap();
        assert_eq!(p.path("/whep/r"), "/api/whep/r");
        assert_eq!(p.path("/api/whep/r/1"), "/api/whep/r/1");
        assert_eq!(p.path("http://x:1/a/b"), "/a/b");
        assert!(BaseUrl::parse("https://x").is_err());
        assert!(BaseUrl::parse("http://").is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(d in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse_response(&d);
            let mut x = b"HTTP/1.1 200 OK\r\n".to_vec();
            x.extend_from_slice(&d);
            let _ = parse_response(&x);
        }
    }
}
