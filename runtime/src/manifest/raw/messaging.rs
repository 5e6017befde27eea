//! `[messaging]`: the embedded broker (default) or NATS JetStream, and how to reach NATS.

use toml::Spanned;

use super::*;

/// The most copies of a stream a JetStream cluster keeps.
const MAX_REPLICAS: usize = 5;

pub(super) fn check_messaging(
    check: &Checker<'_>,
    raw: Option<Spanned<RawMessaging>>,
) -> Result<MessagingSpec, ManifestError> {
    let Some(raw) = raw else {
        return Ok(MessagingSpec::Embedded);
    };
    let raw = raw.into_inner();
    match raw.backend.get_ref().as_str() {
        "embedded" => {
            let nats_only = [
                raw.servers.first().map(|s| (s.span(), "servers")),
                raw.credentials.as_ref().map(|s| (s.span(), "credentials")),
                raw.user.as_ref().map(|s| (s.span(), "user")),
                raw.password_file
                    .as_ref()
                    .map(|s| (s.span(), "password_file")),
                raw.token_file.as_ref().map(|s| (s.span(), "token_file")),
                raw.tls.as_ref().map(|s| (s.span(), "tls")),
                raw.replicas.as_ref().map(|s| (s.span(), "replicas")),
            ];
            if let Some((span, key)) = nats_only.into_iter().flatten().next() {
                return Err(check.invalid(
                    span,
                    format!("`{key}` in [messaging] is for the NATS backend"),
                    "remove it, or set backend = \"nats\"",
                ));
            }
            Ok(MessagingSpec::Embedded)
        }
        "nats" => check_nats(check, raw).map(MessagingSpec::Nats),
        other => Err(check.invalid(
            raw.backend.span(),
            format!("unknown messaging backend {other:?}"),
            "write backend = \"embedded\" (default: logs under data_dir) or \"nats\" (NATS \
             JetStream)",
        )),
    }
}

fn check_nats(check: &Checker<'_>, raw: RawMessaging) -> Result<NatsSpec, ManifestError> {
    if raw.servers.is_empty() {
        return Err(check.invalid(
            raw.backend.span(),
            "the NATS backend needs at least one server",
            "add e.g. servers = [\"nats://127.0.0.1:4222\"]",
        ));
    }
    let mut servers = Vec::new();
    for server in &raw.servers {
        let value = server.get_ref();
        let authority = ["nats://", "tls://"]
            .iter()
            .find_map(|scheme| value.strip_prefix(scheme))
            .filter(|rest| !rest.is_empty() && !rest.contains('/') && !rest.contains('@'));
        match authority {
            Some(authority)
                if authority
                    .rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok()) =>
            {
                servers.push(value.clone());
            }
            _ => {
                return Err(check.invalid(
                    server.span(),
                    format!("NATS server {value:?} is not nats://HOST:PORT or tls://HOST:PORT"),
                    "write e.g. \"nats://127.0.0.1:4222\"; give credentials with `credentials`, \
                     `user` and `password_file`, or `token_file`, not in the URL",
                ));
            }
        }
    }
    let auth = nats_auth(check, &raw)?;
    let tls = raw.tls.map(|tls| nats_tls(check, tls)).transpose()?;
    if tls.is_none()
        && let Some(server) = raw
            .servers
            .iter()
            .find(|s| s.get_ref().starts_with("tls://"))
    {
        return Err(check.invalid(
            server.span(),
            format!(
                "NATS server {:?} is tls://, but [messaging] has no `tls`",
                server.get_ref()
            ),
            "add tls = { ca = \"nats-ca.pem\" } (and cert, key if the servers verify clients)",
        ));
    }
    let replicas = match raw.replicas {
        None => 1,
        Some(replicas) if (1..=MAX_REPLICAS).contains(replicas.get_ref()) => *replicas.get_ref(),
        Some(replicas) => {
            return Err(check.invalid(
                replicas.span(),
                format!("replicas = {} is out of range", replicas.get_ref()),
                format!(
                    "give 1 to {MAX_REPLICAS}: the copies of each stream a JetStream cluster \
                     keeps (1 for a single server)"
                ),
            ));
        }
    };
    Ok(NatsSpec {
        servers,
        auth,
        tls,
        replicas,
    })
}

/// At most one way to authenticate: a credentials file, a user with a password file, or a
/// token file.
fn nats_auth(check: &Checker<'_>, raw: &RawMessaging) -> Result<NatsAuth, ManifestError> {
    let file = |path: &Spanned<String>, key: &str| -> Result<PathBuf, ManifestError> {
        let resolved = check.resolve(path.get_ref());
        if resolved.is_file() {
            Ok(resolved)
        } else {
            Err(check.invalid(
                path.span(),
                format!("`{key}` file {} does not exist", resolved.display()),
                "paths are relative to the manifest's directory",
            ))
        }
    };
    let ways = [
        raw.credentials.as_ref().map(|s| s.span()),
        raw.user
            .as_ref()
            .or(raw.password_file.as_ref())
            .map(|s| s.span()),
        raw.token_file.as_ref().map(|s| s.span()),
    ];
    if let Some(second) = ways.iter().flatten().nth(1) {
        return Err(check.invalid(
            second.clone(),
            "[messaging] gives more than one way to authenticate to NATS",
            "keep one of `credentials`, `user` with `password_file`, or `token_file`",
        ));
    }
    match (
        &raw.credentials,
        &raw.user,
        &raw.password_file,
        &raw.token_file,
    ) {
        (Some(creds), _, _, _) => Ok(NatsAuth::Credentials(file(creds, "credentials")?)),
        (_, Some(user), Some(password), _) => Ok(NatsAuth::UserPassword {
            user: user.get_ref().clone(),
            password_file: file(password, "password_file")?,
        }),
        (_, Some(user), None, _) => Err(check.invalid(
            user.span(),
            "`user` in [messaging] has no `password_file`",
            "add password_file = \"nats.password\" (a file holding the password alone)",
        )),
        (_, None, Some(password), _) => Err(check.invalid(
            password.span(),
            "`password_file` in [messaging] has no `user`",
            "add user = \"...\"",
        )),
        (_, _, _, Some(token)) => Ok(NatsAuth::Token(file(token, "token_file")?)),
        _ => Ok(NatsAuth::None),
    }
}

/// `tls` in `[messaging]`: a CA (else the system's roots), and a client certificate with its
/// key or neither.
fn nats_tls(check: &Checker<'_>, tls: Spanned<RawNatsTls>) -> Result<NatsTlsSpec, ManifestError> {
    let span = tls.span();
    let tls = tls.into_inner();
    let client = match (tls.cert, tls.key) {
        (Some(cert), Some(key)) => Some((check.resolve(&cert), check.resolve(&key))),
        (None, None) => None,
        _ => {
            return Err(check.invalid(
                span,
                "`tls` in [messaging] names a client certificate or key but not both",
                "give both cert and key (servers that verify clients), or neither",
            ));
        }
    };
    Ok(NatsTlsSpec {
        ca: tls.ca.map(|ca| check.resolve(&ca)),
        client,
    })
}
