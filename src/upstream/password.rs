//! Which password a session logs in with, and changing it at the registry with `<newPW>`.
//!
//! An account may carry a `new_password` besides its `password`. Until the change is known to be
//! made, the next login sends `<pw>old</pw><newPW>new</newPW>`; once the registry accepted it,
//! every later login uses the new one. The registry may also have it already — another replica
//! sharing the account changed it first, or this process did before a restart — which shows as a
//! 2200 to the change: the new password is then tried alone, once. A plain login answered 2200
//! while both are configured tries the other one, once. A change the registry refuses otherwise
//! (a password policy, say) is not tried again until the configuration changes; the old password
//! stays in use. Pure bookkeeping: the session layer sends what [`Passwords::first`] and
//! [`Passwords::after`] say and reports each answer to [`Passwords::learn`].

use crate::secret::Secret;

/// One login to send: `pw`, and `new_pw` to change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub pw: Secret,
    pub new_pw: Option<Secret>,
}

/// What an answer taught about the account's passwords, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learned {
    Nothing,
    /// The registry accepted `<newPW>`: the new password is in force.
    Changed,
    /// The registry already had the new password (changed elsewhere or earlier).
    AlreadyNew,
    /// The registry refused the change with this answer; the old password stays.
    ChangeRefused {
        code: u16,
        msg: String,
    },
}

/// An account's passwords and what is known about which one the registry holds.
#[derive(Debug, Clone)]
pub struct Passwords {
    old: Secret,
    new: Option<Secret>,
    /// The registry holds the new password.
    new_in_force: bool,
    /// The next login asks for the change.
    change_pending: bool,
    /// The registry refused the old password to a change: the new one is tried first from then
    /// on, though no login with it has been accepted yet.
    new_likely: bool,
}

impl Passwords {
    pub fn new(password: Secret, new_password: Option<Secret>) -> Passwords {
        Passwords {
            change_pending: new_password.is_some(),
            old: password,
            new: new_password,
            new_in_force: false,
            new_likely: false,
        }
    }

    /// Both passwords tried, neither changed (for `eppmux check`, which must not change anything).
    pub fn without_change(password: Secret, new_password: Option<Secret>) -> Passwords {
        Passwords {
            change_pending: false,
            ..Passwords::new(password, new_password)
        }
    }

    /// The password the registry is believed to hold.
    pub fn current(&self) -> &Secret {
        match (&self.new, self.new_in_force || self.new_likely) {
            (Some(new), true) => new,
            _ => &self.old,
        }
    }

    /// The next login asks for a change: logins should go one at a time until it is decided,
    /// or every session opening at once would send the old password after it stopped working.
    pub fn change_pending(&self) -> bool {
        self.change_pending
    }

    /// The change asked for, if any (made, pending or refused).
    pub fn requested(&self) -> Option<&Secret> {
        self.new.as_ref()
    }

    /// For `/status`: which password is in use and where a change stands.
    pub fn describe(&self) -> &'static str {
        match (&self.new, self.new_in_force, self.change_pending) {
            (None, _, _) => "password",
            (Some(_), true, _) => "new_password (changed at the registry)",
            (Some(_), false, false) if self.new_likely => {
                "new_password (the registry refused the old one; not yet accepted)"
            }
            (Some(_), false, true) => "password (change to new_password pending)",
            (Some(_), false, false) => "password (the registry refused new_password)",
        }
    }

    /// The first login of a session.
    pub fn first(&self) -> Attempt {
        match &self.new {
            Some(new) if self.change_pending => Attempt {
                pw: self.old.clone(),
                new_pw: Some(new.clone()),
            },
            _ => Attempt {
                pw: self.current().clone(),
                new_pw: None,
            },
        }
    }

    /// The one further login to try on the same connection after `tried` was answered `code`
    /// (not 1000), if any.
    pub fn after(&self, tried: &Attempt, code: u16) -> Option<Attempt> {
        let new = self.new.as_ref()?;
        if code >= 2500 {
            // The registry closes the connection after these.
            return None;
        }
        let pw = if tried.new_pw.is_some() {
            // 2200: the old password is no longer valid — perhaps the change was made already.
            // Anything else: the change itself was refused; log in as before.
            if code == 2200 {
                new.clone()
            } else {
                self.old.clone()
            }
        } else if code == 2200 {
            if tried.pw.ct_eq(self.old.expose()) {
                new.clone()
            } else {
                self.old.clone()
            }
        } else {
            return None;
        };
        Some(Attempt { pw, new_pw: None })
    }

    /// Records the registry's answer `code` (`msg`) to `tried`.
    pub fn learn(&mut self, tried: &Attempt, code: u16, msg: &str) -> Learned {
        let Some(new) = &self.new else {
            return Learned::Nothing;
        };
        let was_new = self.new_in_force;
        match (code, tried.new_pw.is_some()) {
            (1000, true) => {
                self.new_in_force = true;
                self.change_pending = false;
                Learned::Changed
            }
            (1000, false) => {
                self.new_in_force = tried.pw.ct_eq(new.expose());
                if self.new_in_force {
                    self.change_pending = false;
                }
                if self.new_in_force && !was_new {
                    Learned::AlreadyNew
                } else {
                    Learned::Nothing
                }
            }
            // The old password is no longer valid: most likely the change was made (by another
            // replica, or before a restart). The next login tries the new one alone, so that a
            // registry that closes the connection after a 2200 cannot keep eppmux asking for the
            // change at every session.
            (2200, true) => {
                self.change_pending = false;
                self.new_likely = true;
                Learned::Nothing
            }
            // Busy, or the session limit: nothing was decided about the password.
            (2400 | 2500.., true) => Learned::Nothing,
            (_, true) => {
                self.change_pending = false;
                Learned::ChangeRefused {
                    code,
                    msg: msg.to_string(),
                }
            }
            _ => Learned::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pws() -> Passwords {
        Passwords::new(Secret::new("old-pw"), Some(Secret::new("new-pw")))
    }

    fn is(s: &Secret, v: &str) -> bool {
        s.ct_eq(v)
    }

    #[test]
    fn without_a_new_password_every_login_uses_the_password_and_nothing_else() {
        let mut p = Passwords::new(Secret::new("pw"), None);
        let a = p.first();
        assert!(is(&a.pw, "pw") && a.new_pw.is_none());
        assert_eq!(p.after(&a, 2200), None);
        assert_eq!(p.learn(&a, 2200, "Authentication error"), Learned::Nothing);
        assert!(is(p.current(), "pw"));
    }

    #[test]
    fn the_first_login_changes_the_password_and_later_ones_use_the_new_one() {
        let mut p = pws();
        let a = p.first();
        assert!(is(&a.pw, "old-pw") && is(a.new_pw.as_ref().unwrap(), "new-pw"));
        assert_eq!(p.learn(&a, 1000, "ok"), Learned::Changed);
        let b = p.first();
        assert!(is(&b.pw, "new-pw") && b.new_pw.is_none());
        assert!(is(p.current(), "new-pw"));
    }

    #[test]
    fn a_2200_to_the_change_tries_the_new_password_once_for_a_change_made_elsewhere() {
        let mut p = pws();
        let a = p.first();
        assert_eq!(p.learn(&a, 2200, "Authentication error"), Learned::Nothing);
        let b = p.after(&a, 2200).expect("a second try");
        assert!(is(&b.pw, "new-pw") && b.new_pw.is_none());
        assert_eq!(p.learn(&b, 1000, "ok"), Learned::AlreadyNew);
        assert!(is(&p.first().pw, "new-pw"));
        assert!(p.first().new_pw.is_none());
    }

    #[test]
    fn a_change_refused_otherwise_keeps_the_old_password_and_is_not_asked_again() {
        let mut p = pws();
        let a = p.first();
        let learned = p.learn(&a, 2004, "Parameter value range error");
        assert_eq!(
            learned,
            Learned::ChangeRefused {
                code: 2004,
                msg: "Parameter value range error".into()
            }
        );
        let b = p.after(&a, 2004).expect("log in as before");
        assert!(is(&b.pw, "old-pw") && b.new_pw.is_none());
        assert_eq!(p.learn(&b, 1000, "ok"), Learned::Nothing);
        let c = p.first();
        assert!(is(&c.pw, "old-pw") && c.new_pw.is_none());
        assert!(is(p.current(), "old-pw"));
    }

    #[test]
    fn after_the_change_a_2200_tries_the_old_password_once() {
        let mut p = pws();
        let a = p.first();
        p.learn(&a, 1000, "ok");
        let b = p.first();
        let c = p.after(&b, 2200).expect("the other password");
        assert!(is(&c.pw, "old-pw"));
        assert_eq!(p.learn(&c, 1000, "ok"), Learned::Nothing);
        assert!(is(p.current(), "old-pw"));
        // A connection the registry closes leaves nothing to try.
        assert_eq!(p.after(&b, 2501), None);
    }

    #[test]
    fn after_a_2200_to_the_change_the_next_session_tries_the_new_password_alone() {
        // A registry that closes the connection after refusing a login never sees the second
        // attempt; asking for the change at every session would fail every time.
        let mut p = pws();
        let a = p.first();
        assert_eq!(p.learn(&a, 2200, "Authentication error"), Learned::Nothing);
        let b = p.first();
        assert!(is(&b.pw, "new-pw") && b.new_pw.is_none());
        assert_eq!(p.learn(&b, 1000, "ok"), Learned::AlreadyNew);
    }

    #[test]
    fn a_busy_or_full_registry_leaves_the_change_pending() {
        let mut p = pws();
        for code in [2400, 2502] {
            let a = p.first();
            assert_eq!(
                p.learn(&a, code, "Session limit exceeded"),
                Learned::Nothing
            );
            assert!(
                p.first().new_pw.is_some(),
                "{code}: the next login asks again"
            );
        }
    }
}
