//! The `[simulated]` table: this process serves simulated hosts, for control-plane
//! scale tests, instead of running sandboxes on this machine (`crate::simulated`).
//! Absent (the default), the agent is a real host; nothing else turns it on.
//!
//! ```toml
//! [simulated]
//! hosts = 50                   # <host_name>-00 … -49, on listen's port + 0 … + 49
//! boot_ms = 500                # a domain's start → its DHCP lease
//! exec_ms = 200                # a command's shortest run
//! output_bytes = 16384         # synthetic stdout per command
//! output_bytes_per_sec = 65536 # its pace
//! failure_rate = 0.0           # share of creates (define, start) and commands that fail
//! cpus = 32                    # each host's capacity
//! memory_mb = 131072
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};
use crate::exec::simulated::ExecProfile;
use crate::hypervisor::simulated::SimProfile;

/// The most simulated hosts one process serves.
pub const MAX_HOSTS: u32 = 200;

/// `[simulated]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedConfig {
    pub hosts: u32,
    pub host: SimProfile,
    pub exec: ExecProfile,
}

/// Absent keys stay absent when serialised, so figment merges key by key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSimulated {
    #[serde(skip_serializing_if = "Option::is_none")]
    hosts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exec_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_bytes_per_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mb: Option<u64>,
}

impl RawSimulated {
    pub(super) fn validate(self) -> Result<SimulatedConfig, ConfigError> {
        let (host, exec) = (SimProfile::default(), ExecProfile::default());
        let hosts = self.hosts.unwrap_or(1);
        if !(1..=MAX_HOSTS).contains(&hosts) {
            return Err(invalid("simulated.hosts", format!("must be 1-{MAX_HOSTS}")));
        }
        let failure_rate = self.failure_rate.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&failure_rate) {
            return Err(invalid("simulated.failure_rate", "must be 0-1"));
        }
        let ms = |field: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(ms) if ms <= 600_000 => Ok(Duration::from_millis(ms)),
            Some(_) => Err(invalid(format!("simulated.{field}"), "must be 0-600000")),
        };
        let output_bytes = self.output_bytes.unwrap_or(exec.output_bytes);
        if output_bytes > 64 << 20 {
            return Err(invalid("simulated.output_bytes", "must be at most 64 MiB"));
        }
        let output_bytes_per_sec = self
            .output_bytes_per_sec
            .unwrap_or(exec.output_bytes_per_sec);
        if output_bytes_per_sec == 0 {
            return Err(invalid(
                "simulated.output_bytes_per_sec",
                "must be positive",
            ));
        }
        let cpus = self.cpus.unwrap_or(host.cpus);
        let memory_mb = self.memory_mb.unwrap_or(host.memory_mb);
        if cpus == 0 || memory_mb == 0 {
            return Err(invalid("simulated", "cpus and memory_mb must be positive"));
        }
        Ok(SimulatedConfig {
            hosts,
            host: SimProfile {
                boot: ms("boot_ms", self.boot_ms, host.boot)?,
                failure_rate,
                cpus,
                memory_mb,
            },
            exec: ExecProfile {
                exec_time: ms("exec_ms", self.exec_ms, exec.exec_time)?,
                output_bytes,
                output_bytes_per_sec,
                failure_rate,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    const BASE: &str = "host_name = \"sim\"\n[tls]\nca_cert = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n\
        [[images]]\nname = \"debian-12\"\npath = \"/i.qcow2\"\n";

    #[test]
    fn a_real_host_unless_the_table_is_there_and_its_values_are_checked() {
        assert!(
            AgentConfig::from_toml(BASE)
                .expect("defaults")
                .simulated
                .is_none()
        );
        let c = AgentConfig::from_toml(&format!(
            "{BASE}[simulated]\nhosts = 50\nboot_ms = 250\nfailure_rate = 0.01\n"
        ))
        .expect("simulated");
        let s = c.simulated.expect("the table");
        assert_eq!(s.hosts, 50);
        assert_eq!(s.host.boot.as_millis(), 250);
        assert!((s.exec.failure_rate - 0.01).abs() < f64::EPSILON);
        for bad in [
            "hosts = 0",
            "hosts = 201",
            "failure_rate = 1.5",
            "failure_rate = -0.1",
            "boot_ms = 600001",
            "output_bytes_per_sec = 0",
            "cpus = 0",
            "nonsense = 1",
        ] {
            let e = AgentConfig::from_toml(&format!("{BASE}[simulated]\n{bad}\n")).expect_err(bad);
            assert!(e.to_string().contains("simulated"), "{bad}: {e}");
        }
        let pooled = format!(
            "{BASE}[pool]\nshapes = [{{ image = \"debian-12\", cpus = 1, memory_mb = 512, size = 1 }}]\n[simulated]\n"
        );
        let e = AgentConfig::from_toml(&pooled).expect_err("a pool on simulated hosts");
        assert!(e.to_string().contains("simulated"), "{e}");
    }
}
