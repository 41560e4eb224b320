//! `mailgate groups`: every group with its compliance state and the offending indirect members,
//! as plain text. Pure: the binary prints it.

use std::fmt::Write as _;

use super::{Compliance, Directory, Group, Rule};

/// The compliance report, one block per group in file order, then a summary line.
pub fn groups(directory: &Directory) -> String {
    let mut out = String::new();
    let mut counts = [0usize; 3];
    let name_width = directory
        .groups()
        .iter()
        .map(|g| g.email.chars().count())
        .max()
        .unwrap_or(0);
    for g in directory.groups() {
        counts[match g.compliance.state {
            Compliance::Compliant => 0,
            Compliance::NonCompliant => 1,
            Compliance::NonCompliantLocked => 2,
        }] += 1;
        let _ = writeln!(
            out,
            "{:<name_width$}  {:<20}  ({}; {} direct member(s){}; from {})",
            g.email,
            g.compliance.state.as_str(),
            restriction(g),
            g.members.len(),
            g.policy
                .as_ref()
                .map(|p| format!("; policy priority {}", p.priority))
                .unwrap_or_default(),
            g.origin
        );
        let width = g
            .compliance
            .offenders
            .iter()
            .map(|o| o.email.chars().count())
            .max()
            .unwrap_or(0);
        for o in &g.compliance.offenders {
            let why = match o.rule {
                Rule::Kind => format!("{} member not allowed", o.kind.as_str()),
                Rule::External => "outside the internal domains".to_owned(),
            };
            let via: Vec<&str> = o.via.iter().map(|v| &**v).collect();
            let _ = writeln!(
                out,
                "    {:<width$}  {why}, via {}",
                o.email,
                via.join(" → ")
            );
        }
    }
    let _ = write!(
        out,
        "{} group(s): {} compliant, {} non-compliant, {} non-compliant-locked",
        directory.groups().len(),
        counts[0],
        counts[1],
        counts[2]
    );
    out
}

fn restriction(g: &Group) -> String {
    if g.restriction.is_open() {
        return "no restriction".to_owned();
    }
    let kinds: Vec<&str> = g
        .restriction
        .allowed_kinds
        .iter()
        .map(|k| k.as_str())
        .collect();
    let mut text = format!("allows {}", kinds.join(", "));
    if g.restriction.internal_only {
        text.push_str(", internal only");
    }
    if g.locked {
        text.push_str(", locked");
    }
    text
}
