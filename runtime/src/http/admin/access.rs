//! Who may use the admin API.
//!
//! Three checks, cheapest first, before a byte of the body is read:
//! - the `Host` must name the address the connection arrived at (or `localhost` on loopback),
//!   so a web page that rebinds a DNS name to 127.0.0.1 does not reach the admin API under
//!   its own name;
//! - an `Origin`, when a browser sends one, must be the admin API's own, so a page the
//!   operator visits cannot POST a swap to it;
//! - every endpoint but `GET /health` needs `Authorization: Bearer <token>`, compared in
//!   constant time with the token file's contents.
//!
//! The token file is read at each request, so an operator rotates the token by writing a new
//! one into the file: the next request needs it, no restart.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::StatusCode;
use http::header::{AUTHORIZATION, HOST, ORIGIN};
use subtle::ConstantTimeEq;

/// Where a connection came from and arrived at (the server puts it in each request's
/// extensions).
#[derive(Debug, Clone)]
pub(crate) struct ConnectionInfo {
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    /// The client certificate verified at the TLS handshake, described for the guest
    /// (`crate::http::client_identity`); `None` without one.
    pub(crate) client_cert: Option<Arc<str>>,
}

/// The admin API's bearer token, kept in a file.
#[derive(Debug, Clone)]
pub(crate) struct AdminToken {
    path: PathBuf,
}

/// The name of the token file the node creates in its data directory.
const TOKEN_FILE: &str = "admin.token";
/// Fewer characters than this is a token someone could guess.
const MIN_TOKEN_CHARS: usize = 16;

/// Why the admin token is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(
        "cannot read the admin token file {}: {cause}\n  hint: check `node.admin_token_file`, \
         or remove it to let the node create one in `node.data_dir`",
        path.display()
    )]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "the admin token in {} has {chars} characters; at least {MIN_TOKEN_CHARS} are needed\n  \
         hint: write a long random token into it, e.g. `openssl rand -hex 32 > {}`",
        path.display(), path.display()
    )]
    TooShort { path: PathBuf, chars: usize },
    #[error("cannot create the admin token file {}: {cause}", path.display())]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("no randomness for a new admin token: {0}")]
    Random(getrandom::Error),
}

impl AdminToken {
    /// The token in `file` (the manifest's `admin_token_file`), or in `admin.token` under
    /// `data_dir`, which is created with a fresh random token (mode 0600) if it does not exist.
    /// The token is read once here, so a missing or short one stops the start.
    pub(crate) fn open(file: Option<&Path>, data_dir: &Path) -> Result<Self, TokenError> {
        let token = match file {
            Some(path) => Self {
                path: path.to_owned(),
            },
            None => {
                let path = data_dir.join(TOKEN_FILE);
                if !path.exists() {
                    create(&path)?;
                    tracing::info!(path = %path.display(), "created the admin API's token: `switchyard status|swap|redrive --manifest <this manifest>` read it from there");
                }
                Self { path }
            }
        };
        token.read()?;
        Ok(token)
    }

    /// Where the token is kept.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<String, TokenError> {
        let text = std::fs::read_to_string(&self.path).map_err(|cause| TokenError::Read {
            path: self.path.clone(),
            cause,
        })?;
        let token = text.trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(TokenError::TooShort {
                path: self.path.clone(),
                chars: token.chars().count(),
            });
        }
        Ok(token.to_owned())
    }
}

/// A new token file at `path`, readable by its owner only, written before anyone can open it.
fn create(path: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::OpenOptionsExt;
    let failed = |cause| TokenError::Create {
        path: path.to_owned(),
        cause,
    };
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(TokenError::Random)?;
    let token = hex::encode(bytes);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(failed)?;
    if let Some(dir) = path.parent() {
        crate::util::sync_dir(dir).map_err(failed)?;
    }
    Ok(())
}

/// Why a request to the admin API was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum Denied {
    #[error(
        "Host {host:?} is not this admin API's address ({local}); send the address you connected to"
    )]
    ForeignHost { host: String, local: SocketAddr },
    #[error("requests from web pages (Origin {0:?}) are refused by the admin API")]
    ForeignOrigin(String),
    #[error(
        "the admin API needs `Authorization: Bearer <token>`; the token is in {0} (the \
         switchyard CLI reads it with --manifest or --token-file, or from SWITCHYARD_ADMIN_TOKEN)"
    )]
    NoToken(String),
    #[error("the admin token is wrong; it is in {0}")]
    WrongToken(String),
    #[error("the admin API cannot check tokens now: {0}")]
    TokenUnreadable(TokenError),
}

impl Denied {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::ForeignHost { .. } | Self::ForeignOrigin(_) => StatusCode::FORBIDDEN,
            Self::NoToken(_) | Self::WrongToken(_) => StatusCode::UNAUTHORIZED,
            Self::TokenUnreadable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Lets a request through, or says why not. `needs_token` is false only for `GET /health`.
pub(super) fn check<B>(
    token: &AdminToken,
    request: &http::Request<B>,
    connection: &ConnectionInfo,
    needs_token: bool,
) -> Result<(), Denied> {
    let headers = request.headers();
    let host = headers
        .get(HOST)
        .map(|host| String::from_utf8_lossy(host.as_bytes()).into_owned())
        .unwrap_or_default();
    if !is_own_host(&host, connection.local) {
        return Err(Denied::ForeignHost {
            host,
            local: connection.local,
        });
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let scheme = if connection.tls { "https" } else { "http" };
        if origin.as_bytes() != format!("{scheme}://{host}").as_bytes() {
            return Err(Denied::ForeignOrigin(
                String::from_utf8_lossy(origin.as_bytes()).into_owned(),
            ));
        }
    }
    if !needs_token {
        return Ok(());
    }
    let where_kept = token.path.display().to_string();
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Denied::NoToken(where_kept.clone()))?;
    let expected = token.read().map_err(Denied::TokenUnreadable)?;
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Denied::WrongToken(where_kept))
    }
}

/// `host` names `local`: its exact `ip:port`, or `localhost:port` when `local` is loopback.
fn is_own_host(host: &str, local: SocketAddr) -> bool {
    if let Ok(addr) = host.parse::<SocketAddr>() {
        return addr == local;
    }
    host.strip_prefix("localhost:")
        .and_then(|port| port.parse::<u16>().ok())
        .is_some_and(|port| local.ip().is_loopback() && port == local.port())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on purpose")]
mod tests {
    use super::*;

    fn local() -> ConnectionInfo {
        ConnectionInfo {
            local: "127.0.0.1:9090".parse().unwrap(),
            peer: "127.0.0.1:50000".parse().unwrap(),
            tls: false,
            client_cert: None,
        }
    }

    fn token_in(dir: &Path) -> AdminToken {
        AdminToken::open(None, dir).unwrap()
    }

    fn request(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut request = http::Request::get("/services");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn a_generated_token_is_long_random_and_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = token_in(dir.path());
        let mode = std::fs::metadata(token.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = token.read().unwrap();
        assert_eq!(first.len(), 64);
        // A second start keeps it; another data dir gets another.
        assert_eq!(token_in(dir.path()).read().unwrap(), first);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(token_in(other.path()).read().unwrap(), first);
    }

    #[test]
    fn a_short_or_missing_token_file_stops_the_start_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let missing = AdminToken::open(Some(&path), dir.path()).unwrap_err();
        assert!(
            missing.to_string().contains("admin_token_file"),
            "{missing}"
        );
        std::fs::write(&path, "short\n").unwrap();
        let short = AdminToken::open(Some(&path), dir.path()).unwrap_err();
        assert!(short.to_string().contains("5 characters"), "{short}");
    }

    #[test]
    fn only_the_right_token_from_the_admin_address_passes() {
        let dir = tempfile::tempdir().unwrap();
        let token = token_in(dir.path());
        let secret = token.read().unwrap();
        let bearer = format!("Bearer {secret}");
        let host = ("host", "127.0.0.1:9090");
        let pass = |headers: &[(&str, &str)]| check(&token, &request(headers), &local(), true);

        pass(&[host, ("authorization", &bearer)]).unwrap();
        pass(&[("host", "localhost:9090"), ("authorization", &bearer)]).unwrap();
        let status = |denied: Denied| denied.status().as_u16();
        assert_eq!(status(pass(&[host]).unwrap_err()), 401);
        let wrong = format!("Bearer {}", secret.replace(|c| c != 'x', "x"));
        assert_eq!(
            status(pass(&[host, ("authorization", &wrong)]).unwrap_err()),
            401
        );
        assert_eq!(
            status(pass(&[host, ("authorization", &secret)]).unwrap_err()),
            401
        );
        // A rebound DNS name, another port, no Host at all.
        for other in ["evil.example:9090", "127.0.0.1:9091", "localhost:9091"] {
            let denied = pass(&[("host", other), ("authorization", &bearer)]).unwrap_err();
            assert_eq!(status(denied), 403, "{other}");
        }
        assert_eq!(
            status(pass(&[("authorization", &bearer)]).unwrap_err()),
            403
        );
        // A page the operator visits; the admin API's own origin passes.
        let page = [
            host,
            ("authorization", &bearer),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(status(pass(&page).unwrap_err()), 403);
        pass(&[
            host,
            ("authorization", &bearer),
            ("origin", "http://127.0.0.1:9090"),
        ])
        .unwrap();
        // /health needs no token, but still the node's own Host.
        check(&token, &request(&[host]), &local(), false).unwrap();
    }

    #[test]
    fn a_rotated_token_counts_from_the_next_request() {
        let dir = tempfile::tempdir().unwrap();
        let token = token_in(dir.path());
        let old = format!("Bearer {}", token.read().unwrap());
        let new = "a-new-token-of-enough-characters";
        std::fs::write(token.path(), new).unwrap();
        let host = ("host", "127.0.0.1:9090");
        let pass = |bearer: &str| {
            check(
                &token,
                &request(&[host, ("authorization", bearer)]),
                &local(),
                true,
            )
        };
        assert!(pass(&old).is_err());
        pass(&format!("Bearer {new}")).unwrap();
    }
}
