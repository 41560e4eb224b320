//! PROXY protocol, upstream client-address and `[admin]` keys.

use std::net::IpAddr;

use super::*;

fn with_listener_keys(keys: &str) -> String {
    BASE.replace(
        "upstream = \"dovecot\"\n\n[[upstream]]",
        &format!("upstream = \"dovecot\"\n{keys}\n\n[[upstream]]"),
    )
}

fn with_upstream_keys(keys: &str) -> String {
    BASE.replace(
        "tls = \"starttls\"\n",
        &format!("tls = \"starttls\"\n{keys}\n"),
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn defaults_forward_the_client_address_by_id() {
    let c = load(BASE).unwrap();
    assert_eq!(c.listeners[0].proxy_protocol, None);
    let up = &c.upstreams["dovecot"];
    assert!(!up.send_proxy_protocol);
    assert!(
        up.send_id,
        "issue 10 item 1: the upstream sees the real client by default"
    );
    assert_eq!(c.admin, None, "no [admin] table, no admin listener");
    // With a PROXY header the ID is not sent by default, and no warning either way.
    let c = load(&with_upstream_keys("send_proxy_protocol = true")).unwrap();
    assert!(!c.upstreams["dovecot"].send_id);
    assert!(c.warnings().iter().all(|w| !w.contains("send_id")));
}

#[test]
fn check_warns_when_the_upstream_sees_only_mailgate() {
    let c = load(&with_upstream_keys("send_id = false")).unwrap();
    assert!(
        c.warnings().iter().any(|w| w.starts_with(
            "upstream \"dovecot\": neither send_id nor send_proxy_protocol"
        )),
        "{:?}",
        c.warnings()
    );
}

#[test]
fn shipped_config_has_loopback_admin() {
    let c = Config::load(&shipped()).unwrap();
    assert_eq!(c.admin, Some(Admin::default()));
    assert_eq!(c.admin.unwrap().bind, "127.0.0.1:9925".parse().unwrap());
    assert!(c.listeners.iter().all(|l| l.proxy_protocol.is_none()));
}

#[test]
fn proxy_protocol_with_trusted_peers() {
    let text = with_listener_keys(
        "proxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\", \"::1\", \"10.0.0.0/8\"]",
    );
    let c = load(&text).unwrap();
    let trusted = c.listeners[0].proxy_protocol.as_ref().unwrap();
    assert_eq!(trusted.cidrs().len(), 3);
    assert!(trusted.contains(ip("127.0.0.1")));
    assert!(trusted.contains(ip("::1")));
    assert!(trusted.contains(ip("10.9.8.7")));
    assert!(trusted.contains(ip("::ffff:10.9.8.7")));
    assert!(!trusted.contains(ip("192.168.0.1")));
    assert!(c.warnings().iter().all(|w| !w.contains("proxy_trusted")));
}

#[test]
fn proxy_protocol_needs_trusted_peers() {
    assert_one(
        &with_listener_keys("proxy_protocol = true"),
        "listener[0].proxy_trusted",
        "required when proxy_protocol = true",
    );
    assert_one(
        &with_listener_keys("proxy_protocol = true\nproxy_trusted = []"),
        "listener[0].proxy_trusted",
        "at least one CIDR",
    );
}

#[test]
fn bad_cidrs_are_reported_each_with_its_index() {
    let all = errors(&with_listener_keys(
        "proxy_protocol = true\nproxy_trusted = [\"127.0.0.1/32\", \"10.0.0.1/8\", \"lb\"]",
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0].starts_with("listener[0].proxy_trusted[1]: \"10.0.0.1/8\": host bits"),
        "{all:#?}"
    );
    assert!(
        all[1].starts_with("listener[0].proxy_trusted[2]: \"lb\": "),
        "{all:#?}"
    );
}

#[test]
fn trusted_peers_are_checked_while_switched_off() {
    let c = load(&with_listener_keys("proxy_trusted = [\"10.0.0.5\"]")).unwrap();
    assert_eq!(c.listeners[0].proxy_protocol, None);
    assert_one(
        &with_listener_keys("proxy_protocol = false\nproxy_trusted = [\"10.0.0.5/7\"]"),
        "listener[0].proxy_trusted[0]",
        "host bits",
    );
}

#[test]
fn trusting_everyone_is_a_warning() {
    let c = load(&with_listener_keys(
        "proxy_protocol = true\nproxy_trusted = [\"0.0.0.0/0\"]",
    ))
    .unwrap();
    let w = c.warnings().join("\n");
    assert!(
        w.contains("listener[0].proxy_trusted: 0.0.0.0/0 trusts every peer"),
        "{w}"
    );
}

#[test]
fn proxy_keys_have_types() {
    assert_one(
        &with_listener_keys("proxy_protocol = \"yes\""),
        "listener[0].proxy_protocol",
        "invalid type",
    );
    assert_one(
        &with_listener_keys("proxy_protocol = true\nproxy_trusted = \"10.0.0.0/8\""),
        "listener[0].proxy_trusted",
        "invalid type",
    );
}

#[test]
fn upstream_client_address_keys() {
    let c = load(&with_upstream_keys(
        "send_proxy_protocol = true\nsend_id = true",
    ))
    .unwrap();
    let up = &c.upstreams["dovecot"];
    assert!(up.send_proxy_protocol && up.send_id);
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("upstream \"dovecot\".send_id: the PROXY header")),
        "{:?}",
        c.warnings()
    );
    let c = load(&with_upstream_keys("send_id = true")).unwrap();
    assert!(c.upstreams["dovecot"].send_id);
    assert!(c.warnings().iter().all(|w| !w.contains("send_id")));
}

#[test]
fn send_id_is_xclient_on_pop3() {
    let text = BASE
        .replace("protocol = \"imap\"", "protocol = \"pop3\"")
        .replace(
            "tls = \"starttls\"\n",
            "tls = \"starttls\"\nsend_id = true\n",
        );
    assert!(load(&text).unwrap().upstreams["dovecot"].send_id);
    let text = BASE
        .replace("protocol = \"imap\"", "protocol = \"pop3\"")
        .replace(
            "tls = \"starttls\"\n",
            "tls = \"starttls\"\nsend_proxy_protocol = true\n",
        );
    assert!(load(&text).unwrap().upstreams["dovecot"].send_proxy_protocol);
}

#[test]
fn admin_table() {
    let c = load(&format!("{BASE}\n[admin]\n")).unwrap();
    assert_eq!(c.admin, Some(Admin::default()));
    assert!(c.warnings().iter().all(|w| !w.starts_with("admin")));

    let c = load(&format!("{BASE}\n[admin]\nbind = \"[::1]:9100\"\n")).unwrap();
    assert_eq!(c.admin.unwrap().bind, "[::1]:9100".parse().unwrap());

    let c = load(&format!("{BASE}\n[admin]\nbind = \"0.0.0.0:9925\"\n")).unwrap();
    let w = c.warnings().join("\n");
    assert!(
        w.contains("admin.bind: \"0.0.0.0:9925\" is not a loopback address"),
        "{w}"
    );
}

#[test]
fn admin_errors() {
    assert_one(
        &format!("{BASE}\n[admin]\nbind = \"localhost:9925\"\n"),
        "admin.bind",
        "is not an IP address and port",
    );
    assert_one(
        &format!("{BASE}\n[admin]\nbind = \"127.0.0.1:1993\"\n"),
        "admin.bind",
        "conflicts with listener[0] \"imaps\"",
    );
    assert_one(
        &format!("{BASE}\n[admin]\nport = 1\n"),
        "admin",
        "unknown field `port`",
    );
    assert_one(
        &format!("{BASE}\n[admin]\nmax_connections = 0\n"),
        "admin.max_connections",
        "out of range",
    );
    assert_one(
        &format!("{BASE}\n[admin]\nheader_timeout = \"0s\"\n"),
        "admin.header_timeout",
        "must be greater than zero",
    );
}

#[test]
fn admin_bounds() {
    let c = load(&format!("{BASE}\n[admin]\n")).unwrap();
    let a = c.admin.unwrap();
    assert_eq!(
        (a.max_connections, a.header_timeout, a.request_timeout),
        (64, Duration::from_secs(5), Duration::from_secs(10))
    );
    let c = load(&format!(
        "{BASE}\n[admin]\nmax_connections = 8\nheader_timeout = \"1s\"\nrequest_timeout = \"2s\"\n"
    ))
    .unwrap();
    let a = c.admin.unwrap();
    assert_eq!(
        (a.max_connections, a.header_timeout, a.request_timeout),
        (8, Duration::from_secs(1), Duration::from_secs(2))
    );
}

#[test]
fn counter_store_keys() {
    let c = load(BASE).unwrap();
    assert_eq!(c.counter_store, None, "local by default");
    let c = load(&format!("{BASE}\n[limits]\nstore = \"local\"\n")).unwrap();
    assert_eq!(c.counter_store, None);
    let c = load(&format!(
        "{BASE}\n[limits]\nstore = \"redis://:s3cret@10.0.0.5:6379/2\"\n"
    ))
    .unwrap();
    let store = c.counter_store.unwrap();
    assert_eq!(store.timeout, std::time::Duration::from_millis(50));
    assert_eq!(store.ca_file, None);
    // The password never shows.
    assert!(!format!("{store:?}").contains("s3cret"), "{store:?}");
    let c = load(&format!(
        "{BASE}\n[limits]\nstore = \"rediss://r.example:6380\"\nstore_ca_file = \"ca.pem\"\n\
         store_timeout = \"20ms\"\n"
    ));
    // The CA file is read at load: a missing one is an error naming it.
    let all = match c {
        Ok(_) => panic!("missing CA accepted"),
        Err(e) => e.to_string(),
    };
    assert!(all.contains("limits.store: /etc/mailgate/ca.pem"), "{all}");
    assert_one(
        &format!("{BASE}\n[limits]\nstore = \"memcached://:pw@x:1\"\n"),
        "limits.store",
        "not a redis:// or rediss:// URL",
    );
    assert!(
        !errors(&format!(
            "{BASE}\n[limits]\nstore = \"memcached://:pw@x:1\"\n"
        ))[0]
            .contains(":pw@")
    );
    // Without a scheme (or with one after the user info) the password is not echoed either.
    for store in ["user:pw@x:1", ":pw@x:1", "u:pw@redis://x:1"] {
        let errors = errors(&format!("{BASE}\n[limits]\nstore = \"{store}\"\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("limits.store"), "{errors:?}");
        assert!(!errors[0].contains("pw"), "{errors:?}");
    }
    assert_one(
        &format!("{BASE}\n[limits]\nstore = \"redis://x:1\"\nstore_ca_file = \"/ca.pem\"\n"),
        "limits.store_ca_file",
        "rediss://",
    );
    assert_one(
        &format!("{BASE}\n[limits]\nstore_timeout = \"1s\"\n"),
        "limits.store_timeout",
        "only with store",
    );
}
