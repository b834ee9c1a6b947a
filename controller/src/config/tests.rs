//! Tests of the configuration (`config.rs`).

use super::*;

fn with_tls(toml: &str) -> String {
    format!("{toml}\n[tls]\nca_cert = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n")
}

fn parse(toml: &str) -> Result<Config, ConfigError> {
    Config::from_figment(
        Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(toml)),
    )
}

#[test]
fn defaults_apply() {
    let c = parse(&with_tls("")).expect("valid");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.heartbeat_interval_secs, 5);
    assert_eq!(c.default_memory_mb, 512);
    assert!(c.database_url.is_none());
    assert_eq!(c.grpc_listen, "127.0.0.1:8081".parse().ok());
}

#[test]
fn observability_settings() {
    let c = parse(&with_tls("")).expect("valid");
    assert_eq!(c.log_format, fluid_telemetry::LogFormat::Text);
    assert!(c.otlp_endpoint.is_empty());
    assert!(!c.metrics.public, "metrics need a token by default");
    let c = parse(&with_tls(
            "log_format = \"json\"\notlp_endpoint = \"http://127.0.0.1:4317\"\n[metrics]\npublic = true",
        ))
        .expect("valid");
    assert_eq!(c.log_format, fluid_telemetry::LogFormat::Json);
    assert_eq!(c.otlp_endpoint, "http://127.0.0.1:4317");
    assert!(c.metrics.public);
    assert!(is_config_key("OTLP_ENDPOINT"));
    assert!(is_config_key("METRICS__PUBLIC"));
}

#[test]
fn grpc_listen_can_be_moved_or_disabled() {
    let c = parse(&with_tls("grpc_listen = \"127.0.0.2:9090\"")).expect("valid");
    assert_eq!(c.grpc_listen, "127.0.0.2:9090".parse().ok());
    let c = parse(&with_tls("grpc_listen = \"\"")).expect("valid");
    assert_eq!(c.grpc_listen, None);
    assert!(parse(&with_tls("grpc_listen = \"nowhere\"")).is_err());
}

#[test]
fn a_network_listener_needs_api_tls_or_an_explicit_opt_out() {
    for top in [
        "listen = \"0.0.0.0:8080\"",
        "listen = \"10.0.0.5:8080\"",
        "listen = \"[::]:8080\"",
        "grpc_listen = \"0.0.0.0:8081\"",
    ] {
        let e = parse(&with_tls(top)).expect_err(top).to_string();
        assert!(e.contains("[api_tls]"), "{e}");
        assert!(e.contains("allow_insecure_listen"), "{e}");
    }
    let c = parse(&with_tls(
        "listen = \"0.0.0.0:8080\"\nallow_insecure_listen = true",
    ))
    .expect("explicitly allowed");
    assert!(c.allow_insecure_listen && c.api_tls.is_none());
    let c = parse(&with_tls(
            "listen = \"0.0.0.0:8080\"\ngrpc_listen = \"0.0.0.0:8081\"\n[api_tls]\ncert = \"/a.pem\"\nkey = \"/a.key\"",
        ))
        .expect("TLS configured");
    assert_eq!(c.api_tls.map(|t| t.cert), Some(PathBuf::from("/a.pem")));
    assert!(parse(&with_tls("listen = \"[::1]:8080\"")).is_ok());
    assert!(is_config_key("API_TLS__CERT"));
    assert!(is_config_key("ALLOW_INSECURE_LISTEN"));
}

#[test]
fn tls_is_required() {
    assert!(parse("").is_err());
}

#[test]
fn bad_values_are_refused() {
    for toml in [
        "cpu_overcommit_ratio = 0.0",
        "default_memory_mb = 1",
        "database_url = \"mysql://x\"",
        "heartbeat_interval_secs = 0",
        "[[hosts]]\nname = \"a b\"\naddress = \"h:1\"",
        "[[hosts]]\nname = \"a\"\naddress = \"no-port\"",
        "unknown_key = 1",
        "output_cap_bytes = 0",
        "[policy]\ncommand_deny = [\"(\"]",
        "[policy]\ndenied_paths = [\"etc\"]",
        "[policy]\nunknown = 1",
        "[approvals]\noverride = true",
        "[approvals]\nwebhook_url = \"http://127.0.0.1:9/x\"",
        "[approvals]\nwebhook_url = \"ftp://x\"\nwebhook_secret = \"s\"",
        "[approvals]\novercommit_timeout_secs = 0",
        "[approvals]\negress_timeout_secs = 0",
        "[ansible]\njob_timeout_secs = 0",
        "[ansible]\nansible_playbook = \" \"",
        "[[ansible.targets]]\nname = \"p\"\nhosts = []\nprivate_key = \"/k\"",
        "[[ansible.targets]]\nname = \"p\"\nhosts = [\"a b\"]\nprivate_key = \"/k\"",
        "[[ansible.targets]]\nname = \"p\"\nhosts = [\"h:0\"]\nprivate_key = \"/k\"",
        "[[ansible.targets]]\nname = \"p\"\nhosts = [\"h\"]\nprivate_key = \"k\"",
        "[[ansible.targets]]\nname = \"SBX-abcdefghij\"\nhosts = [\"h\"]\nprivate_key = \"/k\"",
        "[verify]\nignore_paths = [\"etc\"]",
        "log_format = \"yaml\"",
        "otlp_endpoint = \"collector:4317\"",
        "otlp_endpoint = \"https://collector:4317\"",
        "[metrics]\nopen = true",
    ] {
        assert!(parse(&with_tls(toml)).is_err(), "{toml}");
    }
}

#[test]
fn policy_parses_with_defaults() {
    let c = parse(&with_tls("[policy]\ncommand_deny = [\"^rm -rf /$\"]")).expect("valid");
    assert_eq!(c.policy.command_deny, ["^rm -rf /$"]);
    assert!(c.policy.denied_paths.iter().any(|p| p == "/etc/shadow"));
    assert_eq!(c.output_cap_bytes, 1024 * 1024);
    assert_eq!(
        c.ssh_ca_key_path(),
        PathBuf::from("/var/lib/fluid/ssh_user_ca")
    );
}

#[test]
fn ansible_targets_parse_with_defaults() {
    let c = parse(&with_tls(
        "[ansible]\njob_timeout_secs = 60\n[[ansible.targets]]\nname = \"prod-web\"\n\
             hosts = [\"10.0.0.5\", \"[2001:db8::1]:2222\", \"web.example:22\"]\n\
             private_key = \"/etc/fluid/prod.key\"\nbecome = false\n",
    ))
    .expect("valid");
    let t = &c.ansible.targets[0];
    assert_eq!((t.user.as_str(), t.r#become), ("root", Some(false)));
    assert_eq!(c.ansible.job_timeout_secs, 60);
    assert_eq!(c.ansible.production_approval_timeout_secs, 3600);
    assert_eq!(c.ansible.ansible_playbook, "ansible-playbook");
    assert!(c.verify.ignore_paths.iter().any(|p| p == "/etc/machine-id"));
    assert_eq!(
        crate::support::addr::parse_target_host("[2001:db8::1]:2222"),
        Ok(("2001:db8::1".into(), 2222))
    );
    assert_eq!(
        crate::support::addr::parse_target_host("web.example"),
        Ok(("web.example".into(), 22))
    );
}

#[test]
fn hosts_parse() {
    let c = parse(&with_tls(
        "[[hosts]]\nname = \"kvm-1\"\naddress = \"10.0.0.5:7443\"",
    ))
    .expect("valid");
    assert_eq!(c.hosts[0].address, "10.0.0.5:7443");
}

#[test]
fn only_own_keys_come_from_the_environment() {
    assert!(is_config_key("DATABASE_URL"));
    assert!(is_config_key("TLS__CA_CERT"));
    assert!(!is_config_key("AGENT_HOST_NAME"));
    assert!(!is_config_key("GOLDEN_IMAGE_DIR"));
    assert!(!is_config_key("TEST_DATABASE_URL"));
}

#[test]
fn the_deploy_example_parses() {
    let c = parse(include_str!("../../../deploy/controller.toml")).expect("deploy/controller.toml");
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
}
