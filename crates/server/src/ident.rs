//! Who is calling: the Unix socket's peer credentials (`SO_PEERCRED`: uid and PID, which the
//! kernel vouches for), or a bearer token on HTTP. A caller sees and cancels only its own
//! requests; uid 0 (and the uids of the config's `admins`) see and cancel everything.

use crate::liveness::ProcessStamp;

/// How the caller reached the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The Unix socket (identity from peer credentials).
    Socket,
    /// HTTP with the bearer token (identity from the configuration's `http_uid`).
    Http,
    /// The same process (the demo).
    InProcess,
}

/// The caller of one API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User ID.
    pub uid: u32,
    /// User name (from the password database, or `uid N`).
    pub user: String,
    /// The calling process, when known (Unix socket only).
    pub process: Option<ProcessStamp>,
    /// The transport.
    pub via: Via,
    /// May see and change everyone's requests (uid 0, or listed in the config's `admins`).
    pub admin: bool,
}

impl Identity {
    /// A socket caller from its peer credentials.
    pub fn from_peer(uid: u32, pid: Option<i32>) -> Identity {
        let process = pid
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0)
            .and_then(ProcessStamp::of);
        Identity {
            uid,
            user: user_name(uid),
            process,
            via: Via::Socket,
            admin: uid == 0,
        }
    }

    /// An HTTP caller that presented the token.
    pub fn http(uid: u32) -> Identity {
        Identity {
            uid,
            user: user_name(uid),
            process: None,
            via: Via::Http,
            admin: uid == 0,
        }
    }

    /// A named caller inside this process (the demo's simulated users). Its liveness is this
    /// process.
    pub fn in_process(uid: u32, user: &str) -> Identity {
        Identity {
            uid,
            user: user.to_string(),
            process: ProcessStamp::of(std::process::id()),
            via: Via::InProcess,
            admin: uid == 0,
        }
    }

    /// Whether the caller may see and change everyone's requests.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// The same caller, made an administrator when `admins` lists its uid.
    pub fn with_admins(mut self, admins: &[u32]) -> Identity {
        self.admin |= admins.contains(&self.uid);
        self
    }

    /// Whether the caller may see and cancel a request of `owner_uid`.
    pub fn may_see(&self, owner_uid: u32) -> bool {
        self.is_admin() || self.uid == owner_uid
    }
}

/// The user name of `uid` from the password database, or `uid N` when it has none.
pub fn user_name(uid: u32) -> String {
    let mut buf = vec![0u8; 4096];
    // SAFETY: a C struct of integers and pointers, for which all-zero bytes are a valid value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the use of `pwd`'s strings.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name points at a NUL-terminated string in `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        if let Ok(s) = name.to_str() {
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    format!("uid {uid}")
}

/// The real uid of this process.
pub fn current_uid() -> u32 {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() }
}

/// Compare a presented token with the expected one in time independent of where they differ.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let a = presented.as_bytes();
    let b = expected.as_bytes();
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_a_name_and_unknown_uids_get_a_number() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(3_999_999_999), "uid 3999999999");
    }

    #[test]
    fn only_owners_and_root_see_a_request() {
        let alice = Identity::http(1000);
        assert!(alice.may_see(1000));
        assert!(!alice.may_see(1001));
        assert!(Identity::http(0).may_see(1001));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cre", "s3cret"));
        assert!(!token_matches("s3cret!", "s3cret"));
        assert!(!token_matches("", "s3cret"));
    }
}
