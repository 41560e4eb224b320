//! Shared mailboxes: may this (already proven) user open that shared mailbox over this
//! protocol? Pure, as the rest of policy: `mailgate explain` and the session ask the same
//! function.
//!
//! A user is assigned when the mailbox's `assigned` list names them or a group they belong to,
//! directly or through nested groups (the memberships the directory resolved, as group
//! policies use them). A non-compliant membership (the user, or a group between, breaks a
//! group's membership restriction) never assigns: it may take access away, never grant it. The
//! answer names where the assignment comes from
//! (`shared:office@contoso.com user` or `shared:office@contoso.com group:crm@example.com`),
//! which the audit `policy_source` carries.

use std::sync::Arc;

use super::Reason;
use crate::directory::{self, Directory, Member, SharedMailbox};
use crate::proto::Protocol;

/// A shared mailbox the user may open, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub mailbox: Arc<str>,
    pub grant: Arc<str>,
    /// `user`, or `group:G` (with ` via group:H` for each nested group between).
    pub via: String,
}

impl Assignment {
    /// The audit `policy_source` of a login through this assignment.
    pub fn source(&self) -> String {
        format!("shared:{} {}", self.mailbox, self.via)
    }
}

/// Whether `user` may open the shared mailbox `address` over `protocol`. Every refusal is
/// `mailbox_not_assigned`, whether the mailbox does not exist, the user is not assigned or the
/// protocol is not offered: the wire answer must not tell which shared mailboxes exist.
pub fn open(
    directory: &Directory,
    user: &str,
    address: &str,
    protocol: Protocol,
) -> Result<Assignment, Reason> {
    let mailbox = directory
        .shared_mailbox(address)
        .ok_or(Reason::MailboxNotAssigned)?;
    if let Some(protocols) = &mailbox.protocols
        && !protocols.contains(&protocol)
    {
        return Err(Reason::MailboxNotAssigned);
    }
    assignment(directory, user, mailbox).ok_or(Reason::MailboxNotAssigned)
}

/// Every shared mailbox `user` may open (any protocol), in file order.
pub fn assignments(directory: &Directory, user: &str) -> Vec<(Assignment, Option<Vec<Protocol>>)> {
    directory
        .shared_mailboxes()
        .iter()
        .filter_map(|m| assignment(directory, user, m).map(|a| (a, m.protocols.clone())))
        .collect()
}

fn assignment(directory: &Directory, user: &str, mailbox: &SharedMailbox) -> Option<Assignment> {
    let user = directory::lowercase(user);
    let principal = directory.principal(&user)?;
    let found = |via: String| Assignment {
        mailbox: mailbox.address.clone(),
        grant: mailbox.grant.clone(),
        via,
    };
    // A direct assignment first: it is the plainest answer to "why".
    for member in &mailbox.assigned {
        if let Member::Principal(_) = member
            && directory.member_email(*member) == Some(&*principal.email)
        {
            return Some(found("user".to_owned()));
        }
    }
    for member in &mailbox.assigned {
        let Member::Group(group) = member else {
            continue;
        };
        // A membership that breaks a group's restriction (or passes through a group that
        // does) never grants access through that group, so it never opens a shared mailbox.
        if let Some(m) = principal
            .memberships
            .iter()
            .find(|m| m.group == *group && m.compliant)
        {
            let mut via = format!("group:{}", directory.group(*group)?.email);
            for inner in &m.via {
                via.push_str(&format!(" via group:{}", directory.group(*inner)?.email));
            }
            return Some(found(via));
        }
    }
    None
}
