//! `mailgate groups`: every group with its membership restriction (as the console's query),
//! its compliance state and each offending member with the path it arrives by; as plain text
//! or, for scripts, one JSON document. Pure: the binary prints it.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Compliance, Directory, Group, Offender};

/// The compliance report, one block per group in file order, then a summary line.
pub fn groups(directory: &Directory) -> String {
    let mut out = String::new();
    let name_width = directory
        .groups()
        .iter()
        .map(|g| g.email.chars().count())
        .max()
        .unwrap_or(0);
    for g in directory.groups() {
        let _ = writeln!(
            out,
            "{:<name_width$}  {}",
            g.email,
            g.compliance.state.as_str()
        );
        let _ = writeln!(out, "    query     {}", g.restriction.query());
        let _ = writeln!(out, "    members   {}", facts(g));
        for o in &g.compliance.offenders {
            let _ = writeln!(
                out,
                "    offender  {} {}; {} ({})",
                o.email,
                o.rule_text(),
                path(o),
                o.entry
            );
        }
        if g.compliance.state != Compliance::Compliant {
            let _ = writeln!(
                out,
                "    effect    offenders gain nothing through this group's policy; it can still \
                 restrict them"
            );
        }
    }
    let [compliant, non, locked] = counts(directory);
    let _ = write!(
        out,
        "{} group(s): {compliant} compliant, {non} non-compliant, {locked} non-compliant-locked",
        directory.groups().len(),
    );
    out
}

/// The same report as one JSON document, for scripts:
/// `{"groups": [{"email", "state", "query", "locked", "direct_members", "policy_priority",
/// "offenders": [{"email", "kind", "rule", "via", "entry"}]}], "summary": {...}}`.
pub fn groups_json(directory: &Directory) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        groups: Vec<GroupJson<'a>>,
        summary: Summary,
    }
    #[derive(Serialize)]
    struct GroupJson<'a> {
        email: &'a str,
        state: &'static str,
        query: String,
        locked: bool,
        direct_members: usize,
        policy_priority: Option<u32>,
        offenders: Vec<OffenderJson<'a>>,
    }
    #[derive(Serialize)]
    struct OffenderJson<'a> {
        email: &'a str,
        kind: &'static str,
        rule: &'static str,
        why: String,
        via: Vec<&'a str>,
        entry: &'a str,
    }
    #[derive(Serialize)]
    struct Summary {
        compliant: usize,
        non_compliant: usize,
        non_compliant_locked: usize,
    }
    let [compliant, non_compliant, non_compliant_locked] = counts(directory);
    let doc = Doc {
        groups: directory
            .groups()
            .iter()
            .map(|g| GroupJson {
                email: &g.email,
                state: g.compliance.state.as_str(),
                query: g.restriction.query(),
                locked: g.locked,
                direct_members: g.members.len(),
                policy_priority: g.policy.as_ref().map(|p| p.priority),
                offenders: g
                    .compliance
                    .offenders
                    .iter()
                    .map(|o| OffenderJson {
                        email: &o.email,
                        kind: o.kind.as_str(),
                        rule: o.rule.as_str(),
                        why: o.rule_text(),
                        via: o.via.iter().map(|v| &**v).collect(),
                        entry: &o.entry,
                    })
                    .collect(),
            })
            .collect(),
        summary: Summary {
            compliant,
            non_compliant,
            non_compliant_locked,
        },
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn counts(directory: &Directory) -> [usize; 3] {
    let mut counts = [0usize; 3];
    for g in directory.groups() {
        counts[match g.compliance.state {
            Compliance::Compliant => 0,
            Compliance::NonCompliant => 1,
            Compliance::NonCompliantLocked => 2,
        }] += 1;
    }
    counts
}

fn facts(g: &Group) -> String {
    let mut text = format!("{} direct", g.members.len());
    if let Some(p) = &g.policy {
        let _ = write!(text, "; policy priority {}", p.priority);
    }
    if g.locked {
        text.push_str("; locked");
    }
    let _ = write!(text, "; from {}", g.origin);
    text
}

fn path(o: &Offender) -> String {
    if o.via.is_empty() {
        "direct member".to_owned()
    } else {
        let via: Vec<&str> = o.via.iter().map(|v| &**v).collect();
        format!("via {}", via.join(" → "))
    }
}
