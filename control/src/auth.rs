//! Join tokens: JWT, HS256 only (RFC 7519 / RFC 7515), checked before anything is allocated.
//!
//! A token carries the claims `room`, `role` (`host` | `producer` | `viewer`), optional `identity`,
//! `exp` (required) and optional `iat` / `nbf`. Unknown extra claims are accepted and ignored.
//! The HTTP layer calls [`authorize`] (or [`bearer`] + [`verify`] + [`check_room`] + a role check)
//! for every WHIP/WHEP request *before* any ICE credential, port or engine row exists, and answers
//! [`AuthError::status`] (401 or 403) with [`AuthError::www_authenticate`] on failure.
//!
//! What is rejected (RELIABILITY C8), each with its own [`AuthError`] variant:
//! * any `alg` other than `HS256`: `none`, `HS512`, `RS256`, ... ([`AuthError::WrongAlgorithm`]);
//!   the header is inspected by this module before the signature is checked, so `alg: none` never
//!   reaches a verifier;
//! * a header with `kid` (we have one key and no key ids) or `crit` (no extensions are understood);
//! * a bad signature, a missing `exp`, an `exp` more than [`LEEWAY_SECS`] in the past, an `nbf`
//!   more than [`LEEWAY_SECS`] in the future;
//! * an `aud` claim: RFC 7519 §4.1.3 says a principal that does not identify itself with the
//!   audience must reject the token, and ils has no audience;
//! * a room that is empty, longer than [`MAX_ROOM_CHARS`] or contains control characters; an
//!   identity longer than [`MAX_IDENTITY_CHARS`]; an unknown role; tokens over [`MAX_TOKEN_LEN`].
//!
//! Time is a parameter (`now_unix`, seconds since the Unix epoch): nothing here reads a clock.
//!
//! Roles: `host` may publish, view and manage the room; `producer` may publish and view;
//! `viewer` may only view.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

/// Clock skew tolerated on `exp` and `nbf`, in seconds. Default 60. Bounds how long a token
/// stays usable after it expired (and how early a not-yet-valid one is accepted).
pub const LEEWAY_SECS: u64 = 60;
/// Longest token accepted, in bytes (the whole `header.payload.signature`). Default 4096.
/// Bounds the work and memory spent on a hostile `Authorization` header before the signature
/// check: at most this many bytes are base64-decoded (about 3 KiB of JSON).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest room name in a token, in characters (Unicode scalar values). Default 128.
/// Bounds the per-room key size in control's room table (at most 512 bytes of UTF-8).
pub const MAX_ROOM_CHARS: usize = 128;
/// Longest identity in a token, in characters. Default 256 (at most 1 KiB of UTF-8 per session).
pub const MAX_IDENTITY_CHARS: usize = 256;
/// Longest display `name` in a token, in characters. Default 64 (what other participants see;
/// at most 256 bytes of UTF-8 per participant).
pub const MAX_NAME_CHARS: usize = 64;
/// Most entries in a token's `grants` array. Default 8 (there are 4 grants; duplicates beyond
/// this are refused rather than parsed).
pub const MAX_GRANTS: usize = 8;
/// Name of the file in the data directory that holds the generated secret.
pub const SECRET_FILE: &str = "secret";
/// Random bytes in a generated secret. Default 32 (256 bits, the HS256 block-size guidance of
/// RFC 7518 §3.2 asks for at least 256 bits). Stored hex-encoded: 64 characters.
pub const GENERATED_SECRET_BYTES: usize = 32;
/// Largest secret file read back, in bytes. Default 4096: bounds memory if the file is replaced
/// by something large.
pub const MAX_SECRET_FILE_BYTES: u64 = 4096;

/// What a token allows in its room: the session crate's role (one definition, so the `role` claim
/// of a token and the `/ws` session role are the same type). `host` publishes, views and manages
/// the room; `producer` publishes and views; `viewer` only views.
pub use ils_session::{Role, UnknownRole};

/// One capability a token grants in its room (claim `grants`, an array of these names). A token
/// without `grants` gets its role's defaults ([`Claims::effective_grants`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// Send media (WHIP, `/ws` publish).
    Publish,
    /// Receive media (WHEP, `/ws` subscribe).
    Subscribe,
    /// Send chat messages, reactions, raise a hand, vote.
    Chat,
    /// Manage the session: producer actions on `/ws`, the admin HTTP API.
    Admin,
}

impl Grant {
    /// Every grant, in claim-name order.
    pub const ALL: [Grant; 4] = [Grant::Publish, Grant::Subscribe, Grant::Chat, Grant::Admin];

    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::Publish => "publish",
            Grant::Subscribe => "subscribe",
            Grant::Chat => "chat",
            Grant::Admin => "admin",
        }
    }

    /// Parse a claim value (`publish`, `subscribe`, `chat`, `admin`).
    pub fn parse(s: &str) -> Option<Grant> {
        Grant::ALL.into_iter().find(|g| g.as_str() == s)
    }

    /// What a token without a `grants` claim may do: host publish+subscribe+chat, producer
    /// all four, viewer subscribe+chat.
    pub fn defaults(role: Role) -> Vec<Grant> {
        match role {
            Role::Host => vec![Grant::Publish, Grant::Subscribe, Grant::Chat],
            Role::Producer => Grant::ALL.to_vec(),
            Role::Viewer => vec![Grant::Subscribe, Grant::Chat],
        }
    }
}

/// The claims of a verified token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// Room the token is for (1..=[`MAX_ROOM_CHARS`] characters, no control characters).
    pub room: String,
    /// What the holder may do in the room.
    pub role: Role,
    /// Optional display/participant identity (<= [`MAX_IDENTITY_CHARS`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Expiry, seconds since the Unix epoch (required).
    pub exp: u64,
    /// Issued-at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Explicit grants (claim `grants`); `None` = the role's defaults ([`Grant::defaults`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<Grant>>,
    /// Display name (claim `name`, <= [`MAX_NAME_CHARS`] characters, no control characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Claims {
    /// The grants in force: the `grants` claim if present, else the role's defaults.
    pub fn effective_grants(&self) -> Vec<Grant> {
        match &self.grants {
            Some(g) => {
                let mut g = g.clone();
                g.sort();
                g.dedup();
                g
            }
            None => Grant::defaults(self.role),
        }
    }

    /// Whether the token grants `g`.
    pub fn has(&self, g: Grant) -> bool {
        self.effective_grants().contains(&g)
    }
}

/// Why a request was not authorized. [`AuthError::status`] maps each to 401 or 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing Authorization header: send `Authorization: Bearer <token>`")]
    MissingHeader,
    /// The header is not `Bearer <token>`.
    #[error("Authorization header is not `Bearer <token>`")]
    NotBearer,
    /// The token is longer than [`MAX_TOKEN_LEN`].
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// Not three base64url parts with a JSON header and JSON object payload.
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// The header's `alg` is not `HS256` (includes `none`).
    #[error("token algorithm is not HS256")]
    WrongAlgorithm,
    /// The header names a key id (`kid`); ils has a single key and no key ids.
    #[error("token names an unknown key id")]
    UnknownKeyId,
    /// The header has `crit` extensions, none of which are understood.
    #[error("token header has critical extensions (crit) that are not supported")]
    UnsupportedCritical,
    /// The HMAC does not match.
    #[error("token signature is invalid")]
    BadSignature,
    /// No `exp` claim.
    #[error("token has no exp claim")]
    MissingExp,
    /// `exp` is more than [`LEEWAY_SECS`] in the past.
    #[error("token expired")]
    Expired,
    /// `nbf` is more than [`LEEWAY_SECS`] in the future.
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// A claim is missing, has the wrong type or an invalid value.
    #[error("invalid token claim: {0}")]
    InvalidClaim(&'static str),
    /// The token is for another room.
    #[error("token is for another room")]
    WrongRoom,
    /// The role does not allow the action.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
}

impl AuthError {
    /// HTTP status: 403 for [`AuthError::WrongRoom`] and [`AuthError::Forbidden`] (valid token,
    /// not allowed), 401 for everything else (no valid token).
    pub fn status(&self) -> u16 {
        match self {
            AuthError::WrongRoom | AuthError::Forbidden(_) => 403,
            _ => 401,
        }
    }

    /// Value for the `WWW-Authenticate` response header (RFC 6750 §3).
    pub fn www_authenticate(&self) -> &'static str {
        match self {
            AuthError::MissingHeader | AuthError::NotBearer => "Bearer realm=\"ils\"",
            AuthError::WrongRoom | AuthError::Forbidden(_) => {
                "Bearer realm=\"ils\", error=\"insufficient_scope\""
            }
            _ => "Bearer realm=\"ils\", error=\"invalid_token\"",
        }
    }
}

/// What a request wants to do in a room (see [`authorize`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish media (WHIP).
    Publish,
    /// Watch (WHEP).
    View,
    /// Manage the room (host only).
    Manage,
}

/// The HMAC key tokens are signed with. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl Secret {
    /// A secret from configuration text (`ILS_SECRET`, `--secret`, the config file, or the
    /// stored file): the key is the UTF-8 bytes of `s` exactly as given, so any JWT library
    /// given the same string produces tokens ils accepts.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(s: &str) -> Secret {
        Secret(s.as_bytes().to_vec())
    }

    /// The configured secret if there is one; otherwise the one stored in
    /// `data_dir/`[`SECRET_FILE`]; otherwise a new one ([`GENERATED_SECRET_BYTES`] random bytes,
    /// hex) written there with mode 0600 (the data dir is created with mode 0700 if missing).
    /// Creation is atomic: a temporary file is linked into place, so two processes starting at
    /// once agree on one secret and a crash never leaves a truncated secret behind.
    pub fn load_or_create(data_dir: &Path, configured: Option<&str>) -> io::Result<Secret> {
        if let Some(s) = configured {
            if s.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the configured secret is empty: set ILS_SECRET to a long random string or unset it",
                ));
            }
            return Ok(Secret::from_str(s));
        }
        let path = data_dir.join(SECRET_FILE);
        match read_secret_file(&path) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        create_dir_private(data_dir)?;
        let mut raw = [0u8; GENERATED_SECRET_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw)
            .map_err(|_| io::Error::other("the system random generator failed"))?;
        let hex = hex_encode(&raw);
        static TMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = data_dir.join(format!(".{SECRET_FILE}.tmp.{}.{seq}", std::process::id()));
        write_private(&tmp, hex.as_bytes())?;
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(data_dir);
                Ok(Secret::from_str(&hex))
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_secret_file(&path),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot create {}: {e}", path.display()),
            )),
        }
    }

    /// Number of key bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty (never true for secrets made by [`Secret::load_or_create`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn read_secret_file(path: &Path) -> io::Result<Secret> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = f.metadata() {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "secret file is readable by other users; run `chmod 600` on it"
                );
            }
        }
    }
    let mut text = String::new();
    f.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if text.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(invalid_secret_file(path, "is larger than 4096 bytes"));
    }
    let s = text.trim();
    if s.is_empty() {
        return Err(invalid_secret_file(path, "is empty"));
    }
    Ok(Secret::from_str(s))
}

fn invalid_secret_file(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "secret file {} {what}: delete it to generate a new secret (existing tokens stop working) or set ILS_SECRET",
            path.display()
        ),
    )
}

fn create_dir_private(dir: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot create data dir {}: {e} (choose another with --data-dir)",
                dir.display()
            ),
        )
    })
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// A signed HS256 token for `room`/`role`/`identity`, valid from `now_unix` for `ttl`
/// (`exp = now_unix + ttl` in whole seconds, saturating; `iat = now_unix`). Callers validate the
/// room and identity lengths (see [`MAX_ROOM_CHARS`]); [`verify`] rejects tokens that break them.
pub fn issue(
    secret: &Secret,
    room: &str,
    role: Role,
    identity: Option<&str>,
    ttl: Duration,
    now_unix: u64,
) -> String {
    let claims = Claims {
        room: room.to_owned(),
        role,
        identity: identity.map(str::to_owned),
        exp: now_unix.saturating_add(ttl.as_secs()),
        iat: Some(now_unix),
        grants: None,
        name: None,
    };
    issue_claims(secret, &claims)
}

/// A signed HS256 token carrying exactly `claims` (with `grants` / `name` when set). Callers
/// validate lengths; [`verify`] rejects tokens that break them.
pub fn issue_claims(secret: &Secret, claims: &Claims) -> String {
    // INVARIANT: HMAC accepts keys of any length and `Claims` (strings, an enum and integers)
    // always serializes to JSON, so encoding cannot fail.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(&secret.0),
    )
    // INVARIANT: serde_json cannot fail on this plain struct and HS256 signing is infallible.
    .expect("HS256 encoding of plain claims cannot fail")
}

/// Verifies `token` (HS256 only, signature first, then `exp` required with [`LEEWAY_SECS`] of
/// leeway, `nbf` honoured, `aud` rejected, room 1..=[`MAX_ROOM_CHARS`] characters) at time
/// `now_unix` and returns its claims. Unknown extra claims are ignored.
pub fn verify(secret: &Secret, token: &str, now_unix: u64) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLong);
    }
    check_header(token)?;
    let mut v = Validation::new(Algorithm::HS256);
    // Time checks are ours (sans-IO: jsonwebtoken would read the system clock).
    v.validate_exp = false;
    v.validate_nbf = false;
    v.required_spec_claims.clear();
    v.leeway = 0;
    // No audience configured + validate_aud: a token carrying `aud` is rejected (RFC 7519 4.1.3).
    v.validate_aud = true;
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &DecodingKey::from_secret(&secret.0), &v)
            .map_err(map_jwt_error)?;
    claims_from_map(&data.claims, now_unix)
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            AuthError::WrongAlgorithm
        }
        K::InvalidAudience => AuthError::InvalidClaim("aud present: ils tokens have no audience"),
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::MissingRequiredClaim(_) => AuthError::MissingExp,
        _ => AuthError::Malformed,
    }
}

/// Inspects the JOSE header ourselves so that `alg: none` (which jsonwebtoken cannot even parse)
/// and other algorithms get [`AuthError::WrongAlgorithm`], and `kid`/`crit` are refused.
fn check_header(token: &str) -> Result<(), AuthError> {
    let mut parts = token.split('.');
    let (Some(h), Some(_payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed);
    };
    let mut buf = [0u8; MAX_TOKEN_LEN];
    let n = b64url_decode(h.as_bytes(), &mut buf).ok_or(AuthError::Malformed)?;
    let header: Map<String, Value> =
        serde_json::from_slice(buf.get(..n).ok_or(AuthError::Malformed)?)
            .map_err(|_| AuthError::Malformed)?;
    match header.get("alg") {
        Some(Value::String(a)) if a == "HS256" => {}
        Some(Value::String(_)) => return Err(AuthError::WrongAlgorithm),
        _ => return Err(AuthError::Malformed),
    }
    if header.contains_key("kid") {
        return Err(AuthError::UnknownKeyId);
    }
    if header.contains_key("crit") {
        return Err(AuthError::UnsupportedCritical);
    }
    Ok(())
}

/// Decodes unpadded (or padded) base64url into `out`; `None` on any invalid input or if `out`
/// is too small.
fn b64url_decode(input: &[u8], out: &mut [u8]) -> Option<usize> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'-' => Some(62),
            b'_' => Some(63),
            _ => None,
        }
    }
    let mut end = input.len();
    while end > 0 && input.get(end - 1) == Some(&b'=') {
        end -= 1;
    }
    let input = input.get(..end)?;
    if input.len() % 4 == 1 {
        return None;
    }
    let mut n = 0usize;
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for &c in input {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero (canonical encoding).
    if acc != 0 {
        return None;
    }
    Some(n)
}

/// A JWT NumericDate: a non-negative integer, or a finite non-negative number (fraction dropped).
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(u) = v.as_u64() {
        return Some(u);
    }
    let f = v.as_f64()?;
    if f.is_finite() && f >= 0.0 {
        // Saturating float-to-int conversion.
        Some(f as u64)
    } else {
        None
    }
}

fn claims_from_map(m: &Map<String, Value>, now_unix: u64) -> Result<Claims, AuthError> {
    if m.contains_key("aud") {
        return Err(AuthError::InvalidClaim(
            "aud present: ils tokens have no audience",
        ));
    }
    // Time first: an expired token is "expired" whatever else is wrong with it.
    let exp = match m.get("exp") {
        None | Some(Value::Null) => return Err(AuthError::MissingExp),
        Some(v) => numeric_date(v).ok_or(AuthError::InvalidClaim("exp is not a NumericDate"))?,
    };
    if exp.saturating_add(LEEWAY_SECS) < now_unix {
        return Err(AuthError::Expired);
    }
    match m.get("nbf") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let nbf = numeric_date(v).ok_or(AuthError::InvalidClaim("nbf is not a NumericDate"))?;
            if nbf > now_unix.saturating_add(LEEWAY_SECS) {
                return Err(AuthError::NotYetValid);
            }
        }
    }
    let iat = match m.get("iat") {
        None | Some(Value::Null) => None,
        Some(v) => {
            Some(numeric_date(v).ok_or(AuthError::InvalidClaim("iat is not a NumericDate"))?)
        }
    };
    let room = match m.get("room") {
        Some(Value::String(r)) => r,
        None | Some(Value::Null) => return Err(AuthError::InvalidClaim("room missing")),
        Some(_) => return Err(AuthError::InvalidClaim("room is not a string")),
    };
    validate_room(room).map_err(AuthError::InvalidClaim)?;
    let role = match m.get("role") {
        Some(Value::String(r)) => r
            .parse::<Role>()
            .map_err(|_| AuthError::InvalidClaim("role is not host, producer or viewer"))?,
        None | Some(Value::Null) => return Err(AuthError::InvalidClaim("role missing")),
        Some(_) => return Err(AuthError::InvalidClaim("role is not a string")),
    };
    let identity = match m.get("identity") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            if s.chars().count() > MAX_IDENTITY_CHARS {
                return Err(AuthError::InvalidClaim(
                    "identity longer than 256 characters",
                ));
            }
            if s.chars().any(char::is_control) {
                return Err(AuthError::InvalidClaim(
                    "identity contains control characters",
                ));
            }
            Some(s.clone())
        }
        Some(_) => return Err(AuthError::InvalidClaim("identity is not a string")),
    };
    let grants = match m.get("grants") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            if a.len() > MAX_GRANTS {
                return Err(AuthError::InvalidClaim("grants has more than 8 entries"));
            }
            let mut g = Vec::with_capacity(a.len());
            for v in a {
                match v.as_str().and_then(Grant::parse) {
                    Some(x) => g.push(x),
                    None => {
                        return Err(AuthError::InvalidClaim(
                            "grants entries must be publish, subscribe, chat or admin",
                        ))
                    }
                }
            }
            Some(g)
        }
        Some(_) => return Err(AuthError::InvalidClaim("grants is not an array")),
    };
    let name = match m.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            validate_name(s).map_err(AuthError::InvalidClaim)?;
            Some(s.clone())
        }
        Some(_) => return Err(AuthError::InvalidClaim("name is not a string")),
    };
    Ok(Claims {
        room: room.clone(),
        role,
        identity,
        exp,
        iat,
        grants,
        name,
    })
}

/// Checks a display name: at most [`MAX_NAME_CHARS`] characters, no control characters.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.chars().count() > MAX_NAME_CHARS {
        return Err("name longer than 64 characters");
    }
    if name.chars().any(char::is_control) {
        return Err("name contains control characters");
    }
    Ok(())
}

/// Checks a room name: 1..=[`MAX_ROOM_CHARS`] characters, no control characters. Returns the
/// reason on failure. Used for token claims and by `ils-control token`.
pub fn validate_room(room: &str) -> Result<(), &'static str> {
    if room.is_empty() {
        return Err("room is empty");
    }
    if room.chars().count() > MAX_ROOM_CHARS {
        return Err("room longer than 128 characters");
    }
    if room.chars().any(char::is_control) {
        return Err("room contains control characters");
    }
    Ok(())
}

/// The token from an `Authorization` header value: `Bearer <token>` (scheme case-insensitive,
/// RFC 7235 §2.1), surrounding whitespace ignored.
pub fn bearer(authorization_header: Option<&str>) -> Result<&str, AuthError> {
    let h = authorization_header.ok_or(AuthError::MissingHeader)?.trim();
    let (scheme, rest) = h.split_once([' ', '\t']).ok_or(AuthError::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = rest.trim();
    if token.is_empty() || token.contains([' ', '\t']) {
        return Err(AuthError::NotBearer);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::TooLong);
    }
    Ok(token)
}

/// `Ok` if the token is for `room` (exact match), else [`AuthError::WrongRoom`] (403).
pub fn check_room(claims: &Claims, room: &str) -> Result<(), AuthError> {
    if claims.room == room {
        Ok(())
    } else {
        Err(AuthError::WrongRoom)
    }
}

/// `Ok` if the claims' role allows `action`, else [`AuthError::Forbidden`] (403).
pub fn check_action(claims: &Claims, action: Action) -> Result<(), AuthError> {
    let ok = match action {
        Action::Publish => claims.role.may_publish(),
        Action::View => claims.role.may_view(),
        Action::Manage => claims.role.may_manage(),
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::Forbidden(match action {
            Action::Publish => "a viewer token cannot publish",
            Action::View => "this token cannot view",
            Action::Manage => "only a host token can manage the room",
        }))
    }
}

/// Everything one request needs: bearer token from the header, [`verify`], [`check_room`],
/// [`check_action`]. Pure: call it before allocating anything for the request.
pub fn authorize(
    authorization_header: Option<&str>,
    secret: &Secret,
    room: &str,
    action: Action,
    now_unix: u64,
) -> Result<Claims, AuthError> {
    let token = bearer(authorization_header)?;
    let claims = verify(secret, token, now_unix)?;
    check_room(&claims, room)?;
    check_action(&claims, action)?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    fn secret() -> Secret {
        Secret::from_str("test-secret-0123456789abcdef")
    }

    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                s.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        s
    }

    /// A token with an arbitrary header and payload, HMAC-SHA256-signed with `key` (an
    /// independent implementation: ring directly, not jsonwebtoken).
    fn craft(header: &str, payload: &str, key: &[u8]) -> String {
        let msg = format!(
            "{}.{}",
            b64url(header.as_bytes()),
            b64url(payload.as_bytes())
        );
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
        let tag = ring::hmac::sign(&k, msg.as_bytes());
        format!("{msg}.{}", b64url(tag.as_ref()))
    }

    fn craft_hs256(payload: &str) -> String {
        craft(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            payload,
            b"test-secret-0123456789abcdef",
        )
    }

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        let mut out = [0u8; 16];
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64url(plain.as_bytes()), enc);
            let n = b64url_decode(enc.as_bytes(), &mut out).unwrap();
            assert_eq!(&out[..n], plain.as_bytes());
        }
        assert_eq!(b64url_decode(b"Zm9vYg==", &mut out), Some(4));
        assert_eq!(b64url_decode(b"Z", &mut out), None);
        assert_eq!(
            b64url_decode(b"Zh", &mut out),
            None,
            "non-canonical trailing bits"
        );
        assert_eq!(
            b64url_decode(b"Zm+v", &mut out),
            None,
            "standard alphabet rejected"
        );
        assert_eq!(
            b64url_decode(b"Zm9vYmFy", &mut out[..5]),
            None,
            "output too small"
        );
    }

    #[test]
    fn issued_token_verifies() {
        let t = issue(
            &secret(),
            "lobby",
            Role::Host,
            Some("alice"),
            Duration::from_secs(3600),
            NOW,
        );
        let c = verify(&secret(), &t, NOW + 10).unwrap();
        assert_eq!(
            c,
            Claims {
                room: "lobby".into(),
                role: Role::Host,
                identity: Some("alice".into()),
                exp: NOW + 3600,
                iat: Some(NOW),
                grants: None,
                name: None,
            }
        );
        let t = issue(
            &secret(),
            "r",
            Role::Viewer,
            None,
            Duration::from_secs(60),
            NOW,
        );
        assert_eq!(verify(&secret(), &t, NOW).unwrap().identity, None);
    }

    #[test]
    fn token_from_independent_signer_verifies() {
        let t = craft_hs256(&format!(
            r#"{{"room":"a","role":"producer","exp":{}}}"#,
            NOW + 5
        ));
        let c = verify(&secret(), &t, NOW).unwrap();
        assert_eq!(c.role, Role::Producer);
        assert_eq!(c.iat, None);
    }

    #[test]
    fn grants_and_name_claims_round_trip_and_old_tokens_get_role_defaults() {
        let mut c = verify(
            &secret(),
            &issue(
                &secret(),
                "r",
                Role::Viewer,
                None,
                Duration::from_secs(60),
                NOW,
            ),
            NOW,
        )
        .unwrap();
        assert_eq!(c.grants, None);
        assert_eq!(c.effective_grants(), vec![Grant::Subscribe, Grant::Chat]);
        assert!(!c.has(Grant::Publish));
        c.grants = Some(vec![Grant::Publish, Grant::Admin, Grant::Publish]);
        c.name = Some("Zoë".into());
        let back = verify(&secret(), &issue_claims(&secret(), &c), NOW).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.effective_grants(), vec![Grant::Publish, Grant::Admin]);
        assert!(back.has(Grant::Admin) && !back.has(Grant::Chat));
        // an empty grants array means no grants, not the defaults
        let t = craft_hs256(&format!(
            r#"{{"room":"a","role":"producer","exp":{},"grants":[]}}"#,
            NOW + 5
        ));
        assert!(verify(&secret(), &t, NOW)
            .unwrap()
            .effective_grants()
            .is_empty());
        for bad in [
            r#""grants":"admin""#,
            r#""grants":["root"]"#,
            r#""grants":[1]"#,
            r#""grants":["chat","chat","chat","chat","chat","chat","chat","chat","chat"]"#,
            r#""name":5"#,
            r#""name":"a\nb""#,
        ] {
            let t = craft_hs256(&format!(
                r#"{{"room":"a","role":"producer","exp":{},{bad}}}"#,
                NOW + 5
            ));
            assert!(
                matches!(verify(&secret(), &t, NOW), Err(AuthError::InvalidClaim(_))),
                "{bad}"
            );
        }
        let long = "n".repeat(MAX_NAME_CHARS + 1);
        let t = craft_hs256(&format!(
            r#"{{"room":"a","role":"viewer","exp":{},"name":"{long}"}}"#,
            NOW + 5
        ));
        assert!(verify(&secret(), &t, NOW).is_err());
    }

    #[test]
    fn unknown_extra_claims_are_accepted() {
        let t = craft_hs256(&format!(
            r#"{{"room":"a","role":"viewer","exp":{},"sub":"x","iss":"y","jti":"z","video":{{"x":1}},"metadata":[1,2]}}"#,
            NOW + 5
        ));
        assert_eq!(verify(&secret(), &t, NOW).unwrap().room, "a");
    }

    #[test]
    fn bad_signature_is_rejected() {
        let t = issue(
            &secret(),
            "a",
            Role::Host,
            None,
            Duration::from_secs(60),
            NOW,
        );
        assert_eq!(
            verify(&Secret::from_str("another-secret-xxxxxxxx"), &t, NOW),
            Err(AuthError::BadSignature)
        );
        // Flip one signature character.
        let mut bytes = t.clone().into_bytes();
        let last = bytes.len() - 2;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let t2 = String::from_utf8(bytes).unwrap();
        assert_eq!(verify(&secret(), &t2, NOW), Err(AuthError::BadSignature));
        // Payload swapped under the original signature (privilege escalation attempt).
        let parts: Vec<&str> = t.split('.').collect();
        let forged_payload =
            b64url(format!(r#"{{"room":"b","role":"host","exp":{}}}"#, NOW + 60).as_bytes());
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            verify(&secret(), &forged, NOW),
            Err(AuthError::BadSignature)
        );
        // Empty signature.
        let nosig = format!("{}.{}.", parts[0], parts[1]);
        assert!(matches!(
            verify(&secret(), &nosig, NOW),
            Err(AuthError::BadSignature | AuthError::Malformed)
        ));
    }

    #[test]
    fn alg_none_is_rejected() {
        let payload = format!(r#"{{"room":"a","role":"host","exp":{}}}"#, NOW + 60);
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":"nOnE"}"#,
        ] {
            let unsigned = format!(
                "{}.{}.",
                b64url(header.as_bytes()),
                b64url(payload.as_bytes())
            );
            assert_eq!(
                verify(&secret(), &unsigned, NOW),
                Err(AuthError::WrongAlgorithm),
                "{header}"
            );
            // Even with a valid HS256 MAC over it, `none` is refused.
            let signed = craft(header, &payload, b"test-secret-0123456789abcdef");
            assert_eq!(
                verify(&secret(), &signed, NOW),
                Err(AuthError::WrongAlgorithm)
            );
        }
    }

    #[test]
    fn other_algorithms_are_rejected() {
        let payload = format!(r#"{{"room":"a","role":"host","exp":{}}}"#, NOW + 60);
        for alg in [
            "HS512", "HS384", "RS256", "ES256", "PS256", "EdDSA", "hs256",
        ] {
            let t = craft(
                &format!(r#"{{"alg":"{alg}"}}"#),
                &payload,
                b"test-secret-0123456789abcdef",
            );
            assert_eq!(
                verify(&secret(), &t, NOW),
                Err(AuthError::WrongAlgorithm),
                "{alg}"
            );
        }
        // A real HS512 token made with jsonwebtoken itself.
        let claims = Claims {
            room: "a".into(),
            role: Role::Host,
            identity: None,
            exp: NOW + 60,
            iat: None,
            grants: None,
            name: None,
        };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(b"test-secret-0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(verify(&secret(), &t, NOW), Err(AuthError::WrongAlgorithm));
        // alg missing or not a string.
        for h in [r#"{"typ":"JWT"}"#, r#"{"alg":256}"#, r#"{"alg":null}"#] {
            let t = craft(h, &payload, b"test-secret-0123456789abcdef");
            assert_eq!(verify(&secret(), &t, NOW), Err(AuthError::Malformed), "{h}");
        }
    }

    #[test]
    fn kid_and_crit_are_rejected() {
        let payload = format!(r#"{{"room":"a","role":"host","exp":{}}}"#, NOW + 60);
        let t = craft(
            r#"{"alg":"HS256","kid":"k1"}"#,
            &payload,
            b"test-secret-0123456789abcdef",
        );
        assert_eq!(verify(&secret(), &t, NOW), Err(AuthError::UnknownKeyId));
        let t = craft(
            r#"{"alg":"HS256","crit":["exp"],"exp":1}"#,
            &payload,
            b"test-secret-0123456789abcdef",
        );
        assert_eq!(
            verify(&secret(), &t, NOW),
            Err(AuthError::UnsupportedCritical)
        );
    }

    #[test]
    fn expiry_and_leeway() {
        let t = issue(
            &secret(),
            "a",
            Role::Host,
            None,
            Duration::from_secs(100),
            NOW,
        );
        let exp = NOW + 100;
        assert!(verify(&secret(), &t, exp).is_ok());
        assert!(
            verify(&secret(), &t, exp + LEEWAY_SECS).is_ok(),
            "within leeway"
        );
        assert_eq!(
            verify(&secret(), &t, exp + LEEWAY_SECS + 1),
            Err(AuthError::Expired)
        );
        assert_eq!(verify(&secret(), &t, u64::MAX), Err(AuthError::Expired));
        // exp = 0 and now = 0 must not underflow anywhere.
        let t0 = craft_hs256(r#"{"room":"a","role":"host","exp":0}"#);
        assert!(verify(&secret(), &t0, 0).is_ok());
        assert_eq!(verify(&secret(), &t0, NOW), Err(AuthError::Expired));
        // Fractional NumericDate is accepted; negative/strings are not.
        let tf = craft_hs256(&format!(r#"{{"room":"a","role":"host","exp":{}.5}}"#, NOW));
        assert_eq!(verify(&secret(), &tf, NOW).unwrap().exp, NOW);
        for bad in ["-1", "\"2030-01-01\"", "true", "{}", "1e400"] {
            let t = craft_hs256(&format!(r#"{{"room":"a","role":"host","exp":{bad}}}"#));
            assert!(
                matches!(
                    verify(&secret(), &t, NOW),
                    Err(AuthError::InvalidClaim(_) | AuthError::Malformed)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn missing_exp_is_rejected() {
        let t = craft_hs256(r#"{"room":"a","role":"host"}"#);
        assert_eq!(verify(&secret(), &t, NOW), Err(AuthError::MissingExp));
        let t = craft_hs256(r#"{"room":"a","role":"host","exp":null}"#);
        assert_eq!(verify(&secret(), &t, NOW), Err(AuthError::MissingExp));
    }

    #[test]
    fn nbf_in_the_future_is_rejected() {
        let exp = NOW + 3600;
        let ok = craft_hs256(&format!(
            r#"{{"room":"a","role":"host","exp":{exp},"nbf":{}}}"#,
            NOW + LEEWAY_SECS
        ));
        assert!(verify(&secret(), &ok, NOW).is_ok(), "nbf within leeway");
        let bad = craft_hs256(&format!(
            r#"{{"room":"a","role":"host","exp":{exp},"nbf":{}}}"#,
            NOW + LEEWAY_SECS + 1
        ));
        assert_eq!(verify(&secret(), &bad, NOW), Err(AuthError::NotYetValid));
        let huge = craft_hs256(&format!(
            r#"{{"room":"a","role":"host","exp":{exp},"nbf":{}}}"#,
            u64::MAX
        ));
        assert_eq!(
            verify(&secret(), &huge, u64::MAX - 1),
            Err(AuthError::Expired)
        );
        assert_eq!(verify(&secret(), &huge, NOW), Err(AuthError::NotYetValid));
    }

    #[test]
    fn audience_is_rejected() {
        let t = craft_hs256(&format!(
            r#"{{"room":"a","role":"host","exp":{},"aud":"x"}}"#,
            NOW + 9
        ));
        assert!(matches!(
            verify(&secret(), &t, NOW),
            Err(AuthError::InvalidClaim(_))
        ));
    }

    #[test]
    fn bad_claims_are_rejected() {
        let exp = NOW + 60;
        let long_room = "r".repeat(MAX_ROOM_CHARS + 1);
        let ok_room = "é".repeat(MAX_ROOM_CHARS);
        assert!(verify(
            &secret(),
            &craft_hs256(&format!(
                r#"{{"room":"{ok_room}","role":"host","exp":{exp}}}"#
            )),
            NOW
        )
        .is_ok());
        let long_ident = "i".repeat(MAX_IDENTITY_CHARS + 1);
        for payload in [
            format!(r#"{{"role":"host","exp":{exp}}}"#),
            format!(r#"{{"room":"","role":"host","exp":{exp}}}"#),
            format!(r#"{{"room":"{long_room}","role":"host","exp":{exp}}}"#),
            format!(r#"{{"room":"a\nb","role":"host","exp":{exp}}}"#),
            format!(r#"{{"room":7,"role":"host","exp":{exp}}}"#),
            format!(r#"{{"room":"a","exp":{exp}}}"#),
            format!(r#"{{"room":"a","role":"admin","exp":{exp}}}"#),
            format!(r#"{{"room":"a","role":"Host","exp":{exp}}}"#),
            format!(r#"{{"room":"a","role":["host"],"exp":{exp}}}"#),
            format!(r#"{{"room":"a","role":"host","exp":{exp},"identity":5}}"#),
            format!(r#"{{"room":"a","role":"host","exp":{exp},"identity":"{long_ident}"}}"#),
            format!(r#"{{"room":"a","role":"host","exp":{exp},"iat":"now"}}"#),
        ] {
            assert!(
                matches!(
                    verify(&secret(), &craft_hs256(&payload), NOW),
                    Err(AuthError::InvalidClaim(_))
                ),
                "{payload}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed() {
        for t in [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "!!!.###.$$$",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
            "bm90IGpzb24.e30.c2ln",
        ] {
            let r = verify(&secret(), t, NOW);
            assert!(
                matches!(r, Err(AuthError::Malformed | AuthError::BadSignature)),
                "{t:?} -> {r:?}"
            );
        }
        // A payload that is valid JSON but not an object, correctly signed.
        let t = craft_hs256("[1,2,3]");
        assert_eq!(verify(&secret(), &t, NOW), Err(AuthError::Malformed));
        let t = craft_hs256("not json");
        assert_eq!(verify(&secret(), &t, NOW), Err(AuthError::Malformed));
        // Over-long token.
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(verify(&secret(), &long, NOW), Err(AuthError::TooLong));
    }

    #[test]
    fn every_truncation_of_a_valid_token_fails() {
        let t = issue(
            &secret(),
            "lobby",
            Role::Producer,
            Some("bob"),
            Duration::from_secs(600),
            NOW,
        );
        for n in 0..t.len() {
            assert!(verify(&secret(), &t[..n], NOW).is_err(), "prefix {n}");
        }
        assert!(verify(&secret(), &t, NOW).is_ok());
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer(None), Err(AuthError::MissingHeader));
        assert_eq!(bearer(Some("Bearer abc.def.ghi")), Ok("abc.def.ghi"));
        assert_eq!(bearer(Some("bearer   abc ")), Ok("abc"));
        assert_eq!(bearer(Some("BEARER\tabc")), Ok("abc"));
        for bad in [
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Token abc",
            "Bearerabc",
            "Bearer a b",
        ] {
            assert_eq!(bearer(Some(bad)), Err(AuthError::NotBearer), "{bad:?}");
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(bearer(Some(&long)), Err(AuthError::TooLong));
    }

    #[test]
    fn room_and_role_checks() {
        let t = issue(
            &secret(),
            "lobby",
            Role::Viewer,
            None,
            Duration::from_secs(60),
            NOW,
        );
        let c = verify(&secret(), &t, NOW).unwrap();
        assert_eq!(check_room(&c, "lobby"), Ok(()));
        assert_eq!(check_room(&c, "Lobby"), Err(AuthError::WrongRoom));
        assert_eq!(check_room(&c, "other"), Err(AuthError::WrongRoom));
        assert_eq!(AuthError::WrongRoom.status(), 403);
        assert!(check_action(&c, Action::View).is_ok());
        let e = check_action(&c, Action::Publish).unwrap_err();
        assert_eq!(e.status(), 403);
        assert!(matches!(e, AuthError::Forbidden(_)));

        let h = format!("Bearer {t}");
        assert!(authorize(Some(&h), &secret(), "lobby", Action::View, NOW).is_ok());
        assert_eq!(
            authorize(Some(&h), &secret(), "lobby", Action::Publish, NOW).map(|_| ()),
            Err(AuthError::Forbidden("a viewer token cannot publish"))
        );
        assert_eq!(
            authorize(Some(&h), &secret(), "x", Action::View, NOW),
            Err(AuthError::WrongRoom)
        );
        assert_eq!(
            authorize(None, &secret(), "lobby", Action::View, NOW)
                .unwrap_err()
                .status(),
            401
        );
        let p = issue(
            &secret(),
            "lobby",
            Role::Producer,
            None,
            Duration::from_secs(60),
            NOW,
        );
        assert!(authorize(
            Some(&format!("Bearer {p}")),
            &secret(),
            "lobby",
            Action::Publish,
            NOW
        )
        .is_ok());
        assert!(authorize(
            Some(&format!("Bearer {p}")),
            &secret(),
            "lobby",
            Action::Manage,
            NOW
        )
        .is_err());
        let host = issue(
            &secret(),
            "lobby",
            Role::Host,
            None,
            Duration::from_secs(60),
            NOW,
        );
        for a in [Action::Publish, Action::View, Action::Manage] {
            assert!(authorize(Some(&format!("Bearer {host}")), &secret(), "lobby", a, NOW).is_ok());
        }
    }

    #[test]
    fn statuses_and_challenges() {
        for e in [
            AuthError::MissingHeader,
            AuthError::NotBearer,
            AuthError::TooLong,
            AuthError::Malformed,
            AuthError::WrongAlgorithm,
            AuthError::UnknownKeyId,
            AuthError::UnsupportedCritical,
            AuthError::BadSignature,
            AuthError::MissingExp,
            AuthError::Expired,
            AuthError::NotYetValid,
            AuthError::InvalidClaim("x"),
        ] {
            assert_eq!(e.status(), 401, "{e}");
            assert!(e.www_authenticate().starts_with("Bearer"));
        }
        assert_eq!(AuthError::Forbidden("x").status(), 403);
        assert!(AuthError::Forbidden("x")
            .www_authenticate()
            .contains("insufficient_scope"));
    }

    #[test]
    fn role_parse_and_serde() {
        for r in [Role::Host, Role::Producer, Role::Viewer] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert!("admin".parse::<Role>().is_err());
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::from_str("super-secret-value");
        assert!(!format!("{s:?}").contains("super"));
        assert_eq!(s.len(), 18);
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "ils-auth-test-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn secret_is_generated_once_and_persisted() {
        let dir = temp_dir("gen").join("nested");
        let a = Secret::load_or_create(&dir, None).unwrap();
        let b = Secret::load_or_create(&dir, None).unwrap();
        assert_eq!(a, b, "second start reads the stored secret");
        assert_eq!(a.len(), GENERATED_SECRET_BYTES * 2);
        let text = std::fs::read_to_string(dir.join(SECRET_FILE)).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert!(text.trim().bytes().all(|c| c.is_ascii_hexdigit()));
        // Same string via ILS_SECRET gives the same key.
        assert_eq!(Secret::from_str(text.trim()), a);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            let dmode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(dmode & 0o077, 0);
        }
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(SECRET_FILE)]);
        // A token issued with one verifies with the other.
        let t = issue(&a, "r", Role::Host, None, Duration::from_secs(60), NOW);
        assert!(verify(&b, &t, NOW).is_ok());
        // Different dirs get different secrets.
        let c = Secret::load_or_create(&temp_dir("gen2"), None).unwrap();
        assert_ne!(a, c);
        let _ = std::fs::remove_dir_all(temp_dir("gen"));
        let _ = std::fs::remove_dir_all(temp_dir("gen2"));
    }

    #[test]
    fn configured_secret_wins_and_writes_nothing() {
        let dir = temp_dir("cfg");
        let s = Secret::load_or_create(&dir, Some("configured-secret-123")).unwrap();
        assert_eq!(s, Secret::from_str("configured-secret-123"));
        assert!(!dir.exists());
        assert!(Secret::load_or_create(&dir, Some("")).is_err());
    }

    #[test]
    fn bad_secret_files_are_errors_with_guidance() {
        let dir = temp_dir("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(SECRET_FILE), "  \n").unwrap();
        let e = Secret::load_or_create(&dir, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("delete it"), "{e}");
        std::fs::write(dir.join(SECRET_FILE), vec![b'a'; 5000]).unwrap();
        assert_eq!(
            Secret::load_or_create(&dir, None).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // A hand-written secret is used as-is (trimmed).
        std::fs::write(dir.join(SECRET_FILE), "my-own-secret\n").unwrap();
        assert_eq!(
            Secret::load_or_create(&dir, None).unwrap(),
            Secret::from_str("my-own-secret")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_creation_agrees() {
        let dir = temp_dir("race");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let d = dir.clone();
                std::thread::spawn(move || Secret::load_or_create(&d, None).unwrap())
            })
            .collect();
        let secrets: Vec<Secret> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(secrets.windows(2).all(|w| w[0] == w[1]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_never_panic(s in ".{0,600}") {
            let _ = verify(&secret(), &s, NOW);
            let _ = bearer(Some(&s));
        }

        #[test]
        fn arbitrary_jwt_shaped_input_never_panics(
            h in proptest::collection::vec(any::<u8>(), 0..200),
            p in proptest::collection::vec(any::<u8>(), 0..200),
            sig in "[A-Za-z0-9_-]{0,60}",
            now in any::<u64>(),
        ) {
            let t = format!("{}.{}.{}", b64url(&h), b64url(&p), sig);
            prop_assert!(verify(&secret(), &t, now).is_err());
        }

        #[test]
        fn arbitrary_signed_payloads_never_panic(p in ".{0,300}", now in any::<u64>()) {
            let _ = verify(&secret(), &craft_hs256(&p), now);
        }

        #[test]
        fn issue_verify_round_trip(
            room in "[a-zA-Z0-9_-]{1,128}",
            ident in proptest::option::of("[a-z ]{0,64}"),
            ttl in 0u64..1_000_000,
            now in 0u64..4_000_000_000,
        ) {
            let t = issue(&secret(), &room, Role::Producer, ident.as_deref(), Duration::from_secs(ttl), now);
            let c = verify(&secret(), &t, now).unwrap();
            prop_assert_eq!(c.room, room);
            prop_assert_eq!(c.identity, ident);
            prop_assert_eq!(c.exp, now + ttl);
        }
    }
}
