//! `switchyard cert`: the cluster CA and node certificates, written as PEM files (keys 0600).

use anyhow::{Context, Result};

use super::CertCommand;

pub(crate) fn cert(what: CertCommand) -> Result<()> {
    use switchyard::cert::{CertPem, generate_ca_for, issue_node_cert_for};
    let write = |dir: &std::path::Path, stem: &str, pem: &CertPem| -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        for path in [&cert, &key] {
            anyhow::ensure!(
                !path.exists(),
                "{} exists already; remove it or choose --out",
                path.display()
            );
        }
        std::fs::write(&cert, &pem.cert)
            .with_context(|| format!("cannot write {}", cert.display()))?;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)
            .with_context(|| format!("cannot write {}", key.display()))?;
        std::io::Write::write_all(&mut file, pem.key.as_bytes())?;
        println!("wrote {} and {}", cert.display(), key.display());
        Ok(())
    };
    match what {
        CertCommand::Ca { out, name, days } => write(&out, "ca", &generate_ca_for(&name, days)?),
        CertCommand::Node {
            name,
            ca_dir,
            out,
            days,
        } => {
            let read = |file: &str| {
                let path = ca_dir.join(file);
                std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "cannot read {}: create the CA first with `switchyard cert ca`",
                        path.display()
                    )
                })
            };
            let ca = CertPem {
                cert: read("ca.pem")?,
                key: read("ca.key")?,
            };
            write(&out, &name, &issue_node_cert_for(&ca, &name, days)?)
        }
    }
}
