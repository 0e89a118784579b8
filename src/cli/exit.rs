//! The binary's exit codes: the one table, and the rule that picks one code when a run ends in
//! several outcomes at once. The README's table is a copy of this one, checked by a test here;
//! nothing else in the crate spells an exit code as a number.

use std::process::ExitCode;

/// How a command ended, as its exit code says.
///
/// The variants are in the order of their codes, and that order is also their precedence: when a
/// run ends in several outcomes (some rejects, some clients refused, a target down), the highest
/// code is the one reported, because it names what needs an operator first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Done,
    Failed,
    Usage,
    Rejects,
    Refused,
    Invalid,
    Nonconformant,
    TargetFailed,
    NotAllowed,
}

impl Exit {
    /// Every exit code, in order.
    pub const ALL: [Exit; 9] = [
        Exit::Done,
        Exit::Failed,
        Exit::Usage,
        Exit::Rejects,
        Exit::Refused,
        Exit::Invalid,
        Exit::Nonconformant,
        Exit::TargetFailed,
        Exit::NotAllowed,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The opening words of the code's meaning, as the README's table starts its row.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Done => "done",
            Exit::Failed => "failed",
            Exit::Usage => "usage error",
            Exit::Rejects => "done with rejects",
            Exit::Refused => "done, but the server refused some clients' results",
            Exit::Invalid => "done, but some clients' built resources broke a rule",
            Exit::Nonconformant => "`conformance`: a required check failed",
            Exit::TargetFailed => {
                "done, but some write targets of a run over several systems failed"
            }
            Exit::NotAllowed => "stopped",
        }
    }

    /// The code of a run that ended in each of `outcomes` that is `Some`: the one of highest
    /// precedence, or [`Exit::Done`] when there are none.
    pub fn worst(outcomes: impl IntoIterator<Item = Option<Exit>>) -> Exit {
        outcomes.into_iter().flatten().max().unwrap_or(Exit::Done)
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"));

    /// The README's exit-code table: `(code, meaning)` for each row after the heading.
    fn readme_table() -> Vec<(u8, String)> {
        let section = README
            .split_once("Exit codes\n")
            .expect("the README has an `Exit codes` heading")
            .1;
        section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .filter_map(|row| {
                let mut cells = row.trim_matches('|').splitn(2, '|');
                let code = cells.next()?.trim().parse().ok()?;
                Some((code, cells.next()?.trim().to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_every_code_with_its_meaning_in_order() {
        let table = readme_table();
        let codes: Vec<u8> = table.iter().map(|(c, _)| *c).collect();
        let ours: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(
            codes, ours,
            "the README's exit codes differ from src/cli/exit.rs"
        );
        for ((code, meaning), exit) in table.iter().zip(Exit::ALL) {
            assert!(
                meaning.starts_with(exit.meaning()),
                "README, exit code {code}: {meaning:?} should start with {:?}",
                exit.meaning()
            );
        }
    }

    #[test]
    fn the_highest_code_wins_as_the_readme_says() {
        assert!(README.contains("the highest code wins"));
        assert_eq!(Exit::worst([]), Exit::Done);
        assert_eq!(
            Exit::worst([None, Some(Exit::Rejects), None]),
            Exit::Rejects
        );
        assert_eq!(
            Exit::worst([
                Some(Exit::Rejects),
                Some(Exit::NotAllowed),
                Some(Exit::TargetFailed)
            ]),
            Exit::NotAllowed
        );
        assert_eq!(
            Exit::worst([
                Some(Exit::Invalid),
                Some(Exit::Refused),
                Some(Exit::Rejects)
            ]),
            Exit::Invalid
        );
        assert_eq!(
            Exit::worst([Some(Exit::TargetFailed), Some(Exit::Invalid)]),
            Exit::TargetFailed
        );
    }
}
