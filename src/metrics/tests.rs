//! The encoded text is what operators and dashboards see: these tests read it back.

use super::*;

/// `name{labels} value` sample lines of the text, comments left out.
fn samples(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_owned(), value.to_owned())
        })
        .collect()
}

fn value(text: &str, series: &str) -> Option<String> {
    samples(text)
        .into_iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| v)
}

#[test]
fn connection_guard_tracks_active() {
    let m = Metrics::new();
    let a = m.connection_opened("imaps", Protocol::Imap);
    let b = m.connection_opened("imaps", Protocol::Imap);
    let text = m.encode();
    let active = r#"mailgate_connections_active{listener="imaps",protocol="imap"}"#;
    let total = r#"mailgate_connections_total{listener="imaps",protocol="imap"}"#;
    assert_eq!(value(&text, active).as_deref(), Some("2"), "{text}");
    assert_eq!(value(&text, total).as_deref(), Some("2"), "{text}");
    drop(a);
    drop(b);
    let text = m.encode();
    assert_eq!(value(&text, active).as_deref(), Some("0"), "{text}");
    assert_eq!(value(&text, total).as_deref(), Some("2"), "{text}");
}

#[test]
fn every_family_is_named_and_labelled_as_style_says() {
    let m = Metrics::new();
    let _g = m.connection_opened("pop3s", Protocol::Pop3);
    m.connection_refused("pop3s", Refused::Limit);
    m.connection_refused("pop3s", Refused::ProxyHeader);
    m.connection_refused("pop3s", Refused::ProxyUntrusted);
    m.login(Protocol::Imap, Reason::Ok);
    m.login(Protocol::Imap, Reason::ImapDisabled);
    m.login(Protocol::Pop3, Reason::UpstreamRejected);
    m.would_deny(Protocol::Imap, Reason::ClientNotAllowed);
    m.upstream_connect(Protocol::Imap, Duration::from_millis(3));
    m.upstream_login(Protocol::Imap, Duration::from_millis(40));
    m.token_verification(TokenResult::Ok, Duration::from_micros(300));
    m.token_verification(TokenResult::Invalid, Duration::from_micros(300));
    m.token_verification(TokenResult::Unavailable, Duration::from_secs(5));
    m.bytes_spliced(
        Protocol::Imap,
        Totals {
            bytes_up: 10,
            bytes_down: 2000,
        },
    );
    m.bytes(Protocol::Imap, Side::Upstream, 5);
    m.session_ended(Protocol::Imap, End::IdleTimeout.into());
    m.session_ended(Protocol::Pop3, SessionEnd::Shutdown);
    m.reload(ReloadResult::Ok);
    m.reload(ReloadResult::Rejected);
    m.audit_record_dropped();
    m.audit_error();
    m.grant_event(super::GrantEvent::NeedsReauthorization);
    m.grant_refresh(Duration::from_millis(20));
    m.directory_synced(1_700_000_000.0, Duration::from_millis(1500), 4, 2);
    m.directory_sync_failed("safety_valve", Duration::from_millis(20));
    let text = m.encode();
    assert!(text.ends_with("# EOF\n"), "{text}");

    let want = [
        (
            r#"mailgate_connections_refused_total{listener="pop3s",reason="limit"}"#,
            "1",
        ),
        (
            r#"mailgate_connections_refused_total{listener="pop3s",reason="proxy_header"}"#,
            "1",
        ),
        (
            r#"mailgate_connections_refused_total{listener="pop3s",reason="proxy_untrusted"}"#,
            "1",
        ),
        (
            r#"mailgate_logins_total{protocol="imap",decision="allow",reason="ok"}"#,
            "1",
        ),
        (
            r#"mailgate_logins_total{protocol="imap",decision="deny",reason="imap_disabled"}"#,
            "1",
        ),
        (
            r#"mailgate_logins_total{protocol="pop3",decision="deny",reason="upstream_rejected"}"#,
            "1",
        ),
        (
            r#"mailgate_logins_total{protocol="imap",decision="would_deny",reason="client_not_allowed"}"#,
            "1",
        ),
        (
            r#"mailgate_upstream_connect_seconds_count{protocol="imap"}"#,
            "1",
        ),
        (
            r#"mailgate_upstream_connect_seconds_bucket{le="0.004",protocol="imap"}"#,
            "1",
        ),
        (
            r#"mailgate_upstream_connect_seconds_bucket{le="0.002",protocol="imap"}"#,
            "0",
        ),
        (
            r#"mailgate_upstream_login_seconds_count{protocol="imap"}"#,
            "1",
        ),
        (
            r#"mailgate_token_verification_seconds_count{result="ok"}"#,
            "1",
        ),
        (
            r#"mailgate_token_verification_seconds_count{result="invalid"}"#,
            "1",
        ),
        (
            r#"mailgate_token_verification_seconds_count{result="unavailable"}"#,
            "1",
        ),
        (
            r#"mailgate_bytes_total{protocol="imap",side="upstream"}"#,
            "15",
        ),
        (
            r#"mailgate_bytes_total{protocol="imap",side="downstream"}"#,
            "2000",
        ),
        (
            r#"mailgate_sessions_ended_total{protocol="imap",end="idle_timeout"}"#,
            "1",
        ),
        (
            r#"mailgate_sessions_ended_total{protocol="pop3",end="shutdown"}"#,
            "1",
        ),
        (r#"mailgate_reloads_total{result="ok"}"#, "1"),
        (r#"mailgate_reloads_total{result="rejected"}"#, "1"),
        (
            r#"mailgate_grant_events_total{result="needs_reauthorization"}"#,
            "1",
        ),
        ("mailgate_grant_refresh_seconds_count", "1"),
        ("mailgate_audit_records_dropped_total", "1"),
        ("mailgate_audit_errors_total", "1"),
        // The local counter store always answers.
        ("mailgate_throttle_store_up", "1"),
        (
            "mailgate_directory_sync_last_success_timestamp_seconds",
            "1700000000.0",
        ),
        ("mailgate_directory_sync_duration_seconds", "0.02"),
        (r#"mailgate_directory_entries{kind="user"}"#, "4"),
        (
            r#"mailgate_directory_sync_failures_total{cause="safety_valve"}"#,
            "1",
        ),
    ];
    for (series, v) in want {
        assert_eq!(value(&text, series).as_deref(), Some(v), "{series}\n{text}");
    }

    // Naming rules over the whole output.
    let mut types = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name.starts_with("mailgate_"), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    assert_eq!(types.len(), 20, "{types:?}");
    for (series, _) in samples(&text) {
        let name = series.split('{').next().unwrap();
        let family = types
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("no family for {name}"));
        if types[family] == "counter" {
            assert!(name.ends_with("_total"), "{name}");
        }
        // Only the fixed label keys of docs/development.md section 3, plus `le` on histogram
        // buckets.
        if let Some(labels) = series.split_once('{').map(|(_, l)| l.trim_end_matches('}')) {
            for pair in labels.split(',') {
                let key = pair.split('=').next().unwrap();
                assert!(
                    [
                        "listener", "protocol", "decision", "reason", "side", "end", "result",
                        "le", "kind", "cause"
                    ]
                    .contains(&key),
                    "{series}"
                );
            }
        }
    }
    assert_eq!(types["mailgate_upstream_connect_seconds"], "histogram");
    assert_eq!(types["mailgate_connections_active"], "gauge");
}

#[test]
fn set_audit_stats_only_raises() {
    let m = Metrics::new();
    m.set_audit_stats(5, 2);
    m.set_audit_stats(3, 7);
    let text = m.encode();
    assert_eq!(
        value(&text, "mailgate_audit_records_dropped_total").as_deref(),
        Some("5")
    );
    assert_eq!(
        value(&text, "mailgate_audit_errors_total").as_deref(),
        Some("7")
    );
}

#[test]
fn zero_bytes_make_no_series() {
    let m = Metrics::new();
    m.bytes(Protocol::Pop3, Side::Downstream, 0);
    assert!(!m.encode().contains("mailgate_bytes_total{"));
}

#[test]
fn end_labels_match_splice_audit_values() {
    for end in [
        End::DownstreamClosed,
        End::UpstreamClosed,
        End::IdleTimeout,
        End::Revoked,
        End::Shutdown,
        End::Error(Side::Upstream),
    ] {
        assert_eq!(SessionEnd::from(end).as_str(), end.as_str());
    }
}
