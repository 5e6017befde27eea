//! The store's `book` table: its sections and how their rows are encoded. Why one table holds
//! them is in the [`store`](super::store) module docs.
//!
//! A key is (section, name), sections numbered: `counter` rows map a name to a little-endian
//! `u64`; `usage` rows a service to its bytes and keys (two little-endian `u64`s); `outbox`
//! rows a sequence number (big-endian, so they sort in order) to a postcard-encoded outbox
//! entry.

use redb::{ReadableTable, StorageError, Table, TableDefinition, TableHandle, WriteTransaction};

pub(super) const BOOK: TableDefinition<Key, &[u8]> = TableDefinition::new("book");

type Key = (u8, &'static [u8]);

// Sections, in key order: the counters and usages every commit writes share the first leaf,
// and outbox rows are appended behind them, so a backlog grows away from that leaf.
const COUNTER: u8 = 0;
const USAGE: u8 = 1;
const OUTBOX: u8 = 2;

/// The last version a commit gave.
pub(super) const VERSION: &str = "version";
/// The number the next outbox message gets.
pub(super) const OUTBOX_NEXT: &str = "outbox-next";
/// Rows in the `outbox` section (kept by [`add_outbox`] and [`remove_outbox`]).
const OUTBOX_ROWS: &str = "outbox-rows";
/// The store's random id.
pub(super) const STORE_ID: &str = "store-id";

fn damaged(what: &str, len: usize) -> StorageError {
    StorageError::Corrupted(format!(
        "the state store's `{what}` row has {len} bytes, not the length it is written with"
    ))
}

fn u64_at(bytes: &[u8], at: usize, what: &str) -> Result<u64, StorageError> {
    bytes
        .get(at..at + 8)
        .and_then(|word| <[u8; 8]>::try_from(word).ok())
        .map(u64::from_le_bytes)
        .ok_or_else(|| damaged(what, bytes.len()))
}

/// The counter `name`, if it was ever set.
pub(super) fn counter(
    book: &impl ReadableTable<Key, &'static [u8]>,
    name: &str,
) -> Result<Option<u64>, StorageError> {
    book.get((COUNTER, name.as_bytes()))?
        .map(|found| u64_at(found.value(), 0, name))
        .transpose()
}

pub(super) fn set_counter(
    book: &mut Table<Key, &'static [u8]>,
    name: &str,
    value: u64,
) -> Result<(), StorageError> {
    book.insert((COUNTER, name.as_bytes()), value.to_le_bytes().as_slice())?;
    Ok(())
}

/// `service`'s (bytes, keys); (0, 0) if it never stored anything.
pub(super) fn usage(
    book: &impl ReadableTable<Key, &'static [u8]>,
    service: &str,
) -> Result<(u64, u64), StorageError> {
    match book.get((USAGE, service.as_bytes()))? {
        Some(found) => decode_usage(found.value(), service),
        None => Ok((0, 0)),
    }
}

fn decode_usage(bytes: &[u8], service: &str) -> Result<(u64, u64), StorageError> {
    Ok((u64_at(bytes, 0, service)?, u64_at(bytes, 8, service)?))
}

pub(super) fn set_usage(
    book: &mut Table<Key, &'static [u8]>,
    service: &str,
    (bytes, keys): (u64, u64),
) -> Result<(), StorageError> {
    let mut row = [0; 16];
    row[..8].copy_from_slice(&bytes.to_le_bytes());
    row[8..].copy_from_slice(&keys.to_le_bytes());
    book.insert((USAGE, service.as_bytes()), row.as_slice())?;
    Ok(())
}

/// Every service's (name, bytes, keys), by name.
pub(super) fn usages(
    book: &impl ReadableTable<Key, &'static [u8]>,
) -> Result<Vec<(String, u64, u64)>, StorageError> {
    let mut all = Vec::new();
    each_row(book, USAGE, |service, row| {
        let service = String::from_utf8_lossy(service).into_owned();
        let (bytes, keys) = decode_usage(row, &service)?;
        all.push((service, bytes, keys));
        Ok::<_, StorageError>(true)
    })?;
    Ok(all)
}

/// Calls `each(name, row)` for the rows of `section` in key order while it answers `Ok(true)`.
fn each_row<E: From<StorageError>>(
    book: &impl ReadableTable<Key, &'static [u8]>,
    section: u8,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<bool, E>,
) -> Result<(), E> {
    for found in book.range((section, &[][..])..)? {
        let (key, row) = found?;
        let (in_section, name) = key.value();
        if in_section != section || !each(name, row.value())? {
            break;
        }
    }
    Ok(())
}

/// Puts the outbox entry `seq` (encoded).
pub(super) fn add_outbox(
    book: &mut Table<Key, &'static [u8]>,
    seq: u64,
    entry: &[u8],
) -> Result<(), StorageError> {
    let added = book
        .insert((OUTBOX, seq.to_be_bytes().as_slice()), entry)?
        .is_none();
    if added {
        let rows = counter(book, OUTBOX_ROWS)?.unwrap_or(0);
        set_counter(book, OUTBOX_ROWS, rows + 1)?;
    }
    Ok(())
}

/// Removes the outbox entry `seq`; what it held, if it was there.
pub(super) fn remove_outbox(
    book: &mut Table<Key, &'static [u8]>,
    seq: u64,
) -> Result<Option<Vec<u8>>, StorageError> {
    let gone = book
        .remove((OUTBOX, seq.to_be_bytes().as_slice()))?
        .map(|gone| gone.value().to_vec());
    if gone.is_some() {
        let rows = counter(book, OUTBOX_ROWS)?.unwrap_or(0);
        set_counter(book, OUTBOX_ROWS, rows.saturating_sub(1))?;
    }
    Ok(gone)
}

/// How many entries the outbox holds.
pub(super) fn outbox_rows(
    book: &impl ReadableTable<Key, &'static [u8]>,
) -> Result<u64, StorageError> {
    Ok(counter(book, OUTBOX_ROWS)?.unwrap_or(0))
}

/// Calls `each(seq, entry)` for the outbox entries in order while it answers `Ok(true)`.
pub(super) fn each_outbox<E: From<StorageError>>(
    book: &impl ReadableTable<Key, &'static [u8]>,
    mut each: impl FnMut(u64, &[u8]) -> Result<bool, E>,
) -> Result<(), E> {
    each_row(book, OUTBOX, |seq, entry| {
        let seq = <[u8; 8]>::try_from(seq)
            .map(u64::from_be_bytes)
            .map_err(|_| damaged("outbox", seq.len()))?;
        each(seq, entry)
    })
}

/// Left where the table `meta` was, with other types, so that a switchyard from before
/// `book` refuses to open the store (redb names the type mismatch of `meta`) instead of
/// starting over beside it with fresh counters, a new store id and an empty outbox.
const TRIPWIRE: TableDefinition<&str, &str> = TableDefinition::new("meta");

/// Makes the file one with `book`, inside `write`: moves the rows of a file written before it
/// (tables `meta`, `usage`, `outbox`) into it, drops those tables, and sets the [`TRIPWIRE`].
pub(super) fn take_in_old_tables(write: &WriteTransaction) -> Result<(), redb::Error> {
    let names: Vec<String> = write
        .list_tables()?
        .map(|table| table.name().to_owned())
        .collect();
    let has = |table: &str| names.iter().any(|name| name == table);
    if !has(BOOK.name()) {
        move_old_tables(write, &has)?;
    }
    write.open_table(TRIPWIRE)?.insert(
        "moved-to",
        "book (an older switchyard cannot open this store)",
    )?;
    Ok(())
}

fn move_old_tables(
    write: &WriteTransaction,
    has: &dyn Fn(&str) -> bool,
) -> Result<(), redb::Error> {
    use before_book::{META, OUTBOX as OLD_OUTBOX, USAGE as OLD_USAGE};
    let mut book = write.open_table(BOOK)?;
    if has(META.name()) {
        let meta = write.open_table(META)?;
        for found in meta.range(..)? {
            let (name, value) = found?;
            set_counter(&mut book, name.value(), value.value())?;
        }
    }
    if has(OLD_USAGE.name()) {
        let usage = write.open_table(OLD_USAGE)?;
        for found in usage.range(..)? {
            let (service, used) = found?;
            set_usage(&mut book, service.value(), used.value())?;
        }
    }
    if has(OLD_OUTBOX.name()) {
        let outbox = write.open_table(OLD_OUTBOX)?;
        for found in outbox.range(0..)? {
            let (seq, entry) = found?;
            add_outbox(&mut book, seq.value(), entry.value())?;
        }
    }
    drop(book);
    write.delete_table(META)?;
    write.delete_table(OLD_USAGE)?;
    write.delete_table(OLD_OUTBOX)?;
    Ok(())
}

/// The tables of files written before `book` (the state tests write such a file with them).
pub(super) mod before_book {
    use redb::TableDefinition;
    pub(in crate::state) const USAGE: TableDefinition<&str, (u64, u64)> =
        TableDefinition::new("usage");
    pub(in crate::state) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
    pub(in crate::state) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
}
