//! `GET /state/<service>/export` and `POST /state/<service>/import`: a service's keys as JSON
//! lines, for backups. The first line says what the file is and whose keys it holds; each
//! next line is one key: `{"key": "...", "value": "<base64>", "version": n}`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::host::StateEntry;

/// What the file's first line says.
#[derive(Serialize, Deserialize)]
struct Header {
    /// The format's version.
    switchyard_state: u32,
    service: String,
    keys: usize,
}

#[derive(Serialize, Deserialize)]
struct Line {
    key: String,
    value: String,
    #[serde(default)]
    version: u64,
}

const FORMAT: u32 = 1;

/// `entries` of `service` as an export file.
pub(super) fn export(service: &str, entries: &[StateEntry]) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = serde_json::to_vec(&Header {
        switchyard_state: FORMAT,
        service: service.to_owned(),
        keys: entries.len(),
    })?;
    out.push(b'\n');
    let base64 = base64::engine::general_purpose::STANDARD;
    for entry in entries {
        serde_json::to_writer(
            &mut out,
            &Line {
                key: entry.key.clone(),
                value: base64.encode(&entry.value),
                version: entry.version,
            },
        )?;
        out.push(b'\n');
    }
    Ok(out)
}

/// The keys of an export file, checked to be `service`'s; the error says which line is wrong
/// and why.
pub(super) fn import(service: &str, file: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let text = std::str::from_utf8(file).map_err(|err| {
        format!("the export is not UTF-8 text ({err}); is it a switchyard state export?")
    })?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty());
    let Some((_, first)) = lines.next() else {
        return Err(
            "the export is empty; expected the lines `switchyard state export` writes".into(),
        );
    };
    let header: Header = serde_json::from_str(first).map_err(|err| {
        format!(
            "line 1 is not a switchyard state export header ({err}); expected \
             {{\"switchyard_state\":{FORMAT},\"service\":\"...\",\"keys\":n}}"
        )
    })?;
    if header.switchyard_state != FORMAT {
        return Err(format!(
            "line 1: the export's format is version {}, this node reads version {FORMAT}; \
             import it with the switchyard that exported it",
            header.switchyard_state
        ));
    }
    if header.service != service {
        return Err(format!(
            "line 1: the export holds the keys of service `{}`, not `{service}`, and a service \
             may touch only its own keys; import it into `{}` (switchyard state import {} \
             FILE)",
            header.service, header.service, header.service
        ));
    }
    let base64 = base64::engine::general_purpose::STANDARD;
    let mut entries = Vec::with_capacity(header.keys);
    for (number, line) in lines {
        let line: Line = serde_json::from_str(line)
            .map_err(|err| format!("line {}: not a key of an export: {err}", number + 1))?;
        let value = base64.decode(&line.value).map_err(|err| {
            format!(
                "line {}: the value of key `{}` is not base64: {err}",
                number + 1,
                line.key
            )
        })?;
        entries.push((line.key, value));
    }
    if entries.len() != header.keys {
        return Err(format!(
            "the export says it holds {} keys but has {}: it was cut short; export again",
            header.keys,
            entries.len()
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &[u8]) -> StateEntry {
        StateEntry {
            key: key.into(),
            value: value.to_vec(),
            version: 3,
        }
    }

    #[test]
    fn an_export_imports_back_whole() -> Result<(), String> {
        let file = export("orders", &[entry("a", b"\x00\xff"), entry("b/c", b"")])
            .map_err(|err| err.to_string())?;
        let back = import("orders", &file)?;
        assert_eq!(
            back,
            vec![("a".into(), vec![0, 255]), ("b/c".into(), Vec::new())]
        );
        Ok(())
    }

    #[test]
    fn an_import_refuses_another_services_keys_and_a_cut_file() -> Result<(), String> {
        let file = export("orders", &[entry("a", b"1"), entry("b", b"2")])
            .map_err(|err| err.to_string())?;
        let other = import("billing", &file).err().unwrap_or_default();
        assert!(
            other.contains("keys of service `orders`, not `billing`"),
            "{other}"
        );
        let cut = &file[..file.len() - 20];
        let cut = import("orders", cut).err().unwrap_or_default();
        assert!(cut.contains("line 3") || cut.contains("cut short"), "{cut}");
        let junk = import("orders", b"hello\n").err().unwrap_or_default();
        assert!(junk.contains("line 1"), "{junk}");
        Ok(())
    }
}
