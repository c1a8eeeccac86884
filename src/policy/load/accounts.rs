//! Resolution of the users and groups named in the policy, through the system's user and
//! group databases (NSS) at load time.
//!
//! A name that a later database change points elsewhere keeps the id it had at load time
//! until the next reload.

use std::ffi::CString;

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

use super::raw::IdRef;

/// Ids that no policy may name. `(uid_t)-1` means "leave unchanged" to setresuid and
/// chown, and 65535 is `(uint16_t)-1`, the same value in the 16-bit id system calls that
/// Linux still provides, so neither reliably denotes one account.
const RESERVED_IDS: [u32; 2] = [u32::MAX, 65535];

/// A user found in the user database.
#[derive(Debug, Clone)]
pub(super) struct Account {
    pub name: String,
    pub uid: u32,
    /// Primary group.
    pub gid: u32,
}

/// Database of an id, for messages and lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Database {
    User,
    Group,
}

impl Database {
    fn id_word(self) -> &'static str {
        match self {
            Database::User => "uid",
            Database::Group => "gid",
        }
    }

    fn entry_word(self) -> &'static str {
        match self {
            Database::User => "user",
            Database::Group => "group",
        }
    }
}

/// A reference after parsing, before any lookup.
enum Parsed<'a> {
    Name(&'a str),
    Id(u32),
}

/// Splits a reference into a name or a numeric id. A string of ASCII digits is an id, as
/// useradd and groupadd reject all-digit names.
fn parse(reference: &IdRef, database: Database) -> Result<Parsed<'_>, String> {
    let id_word = database.id_word();
    let number = match reference {
        IdRef::Id(number) => *number,
        IdRef::Name(name) if name.is_empty() => {
            return Err(format!("empty {} name", database.entry_word()));
        }
        IdRef::Name(name) if name.bytes().all(|b| b.is_ascii_digit()) => {
            name.parse().unwrap_or(i64::MAX)
        }
        IdRef::Name(name) => return Ok(Parsed::Name(name)),
    };
    let id = u32::try_from(number)
        .map_err(|_| format!("{id_word} {number} is outside the range 0 to {}", u32::MAX))?;
    check_not_reserved(id, database)?;
    Ok(Parsed::Id(id))
}

fn check_not_reserved(id: u32, database: Database) -> Result<(), String> {
    if RESERVED_IDS.contains(&id) {
        return Err(format!(
            "{} {id} is reserved: 4294967295 is (uid_t)-1 and 65535 its 16-bit form, which \
             setresuid, setresgid and chown read as \"no change\"",
            database.id_word()
        ));
    }
    Ok(())
}

fn lookup_user_by_name(name: &str) -> Result<User, String> {
    match User::from_name(name) {
        Ok(Some(user)) => Ok(user),
        Ok(None) => Err(format!("unknown user {name:?}")),
        Err(errno) => Err(format!("failed to look up user {name:?}: {errno}")),
    }
}

fn lookup_group_by_name(name: &str) -> Result<Group, String> {
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group),
        Ok(None) => Err(format!("unknown group {name:?}")),
        Err(errno) => Err(format!("failed to look up group {name:?}: {errno}")),
    }
}

/// Resolves the `run_as` user. It must have an entry in the user database, which supplies
/// its name (for the supplementary groups) and its primary group.
pub(super) fn resolve_account(reference: &IdRef) -> Result<Account, String> {
    let user = match parse(reference, Database::User)? {
        Parsed::Name(name) => lookup_user_by_name(name)?,
        Parsed::Id(uid) => match User::from_uid(Uid::from_raw(uid)) {
            Ok(Some(user)) => user,
            Ok(None) => {
                return Err(format!(
                    "uid {uid} has no entry in the user database, which run_as needs for \
                     the primary and supplementary groups"
                ));
            }
            Err(errno) => return Err(format!("failed to look up uid {uid}: {errno}")),
        },
    };
    let account = Account {
        name: user.name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    };
    check_not_reserved(account.uid, Database::User)?;
    check_not_reserved(account.gid, Database::Group)?;
    Ok(account)
}

/// Resolves a user to a uid. A numeric uid needs no database entry, because a peer may run
/// under a uid that has none (for example inside a container).
pub(super) fn resolve_uid(reference: &IdRef) -> Result<u32, String> {
    match parse(reference, Database::User)? {
        Parsed::Id(uid) => Ok(uid),
        Parsed::Name(name) => {
            let uid = lookup_user_by_name(name)?.uid.as_raw();
            check_not_reserved(uid, Database::User)?;
            Ok(uid)
        }
    }
}

/// Resolves a group to a gid. A numeric gid needs no database entry.
pub(super) fn resolve_gid(reference: &IdRef) -> Result<u32, String> {
    match parse(reference, Database::Group)? {
        Parsed::Id(gid) => Ok(gid),
        Parsed::Name(name) => {
            let gid = lookup_group_by_name(name)?.gid.as_raw();
            check_not_reserved(gid, Database::Group)?;
            Ok(gid)
        }
    }
}

/// Returns the supplementary groups of `account` from the group database, sorted and
/// without duplicates. The list includes its primary group, as initgroups(3) would set it.
pub(super) fn supplementary_groups(account: &Account) -> Result<Vec<u32>, String> {
    let name = CString::new(account.name.as_str())
        .map_err(|_| format!("user name {:?} contains a NUL byte", account.name))?;
    let groups = getgrouplist(&name, Gid::from_raw(account.gid)).map_err(|errno| {
        format!(
            "failed to read the supplementary groups of user {:?}: {errno}",
            account.name
        )
    })?;
    let mut groups: Vec<u32> = groups.into_iter().map(Gid::as_raw).collect();
    groups.sort_unstable();
    groups.dedup();
    for gid in &groups {
        check_not_reserved(*gid, Database::Group)?;
    }
    Ok(groups)
}
