//! The process's exit status: one type, mapped to a number once (in [`Exit::code`]), so a
//! command says what kind of failure it had and never picks a number itself. The table
//! (error type → tier → exit code) is in docs/design-notes.md (issue 29).

use crate::stages::stage::Tier;

/// Ordered by precedence: when several effects or models fail, the largest wins
/// (a machine's problem outranks a recipe's, an interruption outranks both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// Everything asked for was done.
    Ok,
    /// A stage (or a check of what was built) failed through its input: the recipe, the
    /// data, a failing teacher command, a refused digest. Fix the input and rebuild.
    Failed,
    /// Bad recipe or usage, found before anything ran.
    Usage,
    /// The machine's problem (disk, network, a missing tool) or a bug in effectc.
    Infra,
    /// Ctrl-C.
    Interrupted,
}

impl Exit {
    pub fn code(self) -> i32 {
        match self {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Infra => 3,
            Exit::Interrupted => 130,
        }
    }
}

impl From<Tier> for Exit {
    /// A failed stage's tier: the input's is the user's to fix (1); the machine's and
    /// effectc's own are not (3).
    fn from(tier: Tier) -> Exit {
        match tier {
            Tier::Input => Exit::Failed,
            Tier::Environment | Tier::Bug => Exit::Infra,
        }
    }
}

impl From<&crate::models::fetch::FetchError> for Exit {
    /// A bad download is the input's fault (1), a registry entry without a source a
    /// usage error (2), the network or the disk the machine's (3).
    fn from(e: &crate::models::fetch::FetchError) -> Exit {
        use crate::models::fetch::FetchError as F;
        match e {
            F::Digest { .. } | F::PresentDiffers { .. } => Exit::Failed,
            F::NoSource { .. } => Exit::Usage,
            F::Status { .. } | F::Transport { .. } | F::Io { .. } => Exit::Infra,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_precedence() {
        let all = [
            Exit::Ok,
            Exit::Failed,
            Exit::Usage,
            Exit::Infra,
            Exit::Interrupted,
        ];
        assert_eq!(all.map(Exit::code), [0, 1, 2, 3, 130]);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Exit::from(Tier::Input), Exit::Failed);
        assert_eq!(Exit::from(Tier::Environment), Exit::Infra);
        assert_eq!(Exit::from(Tier::Bug), Exit::Infra);
    }
}
