//! The `[pool]` table of the agent's configuration: the warm pool, sandboxes restored
//! ahead of time and handed out on create (`crate::sandboxes::warm`).
//!
//! ```toml
//! [pool]
//! shapes = [{ image = "debian-12", cpus = 1, memory_mb = 512, size = 2 }]
//! ```
//!
//! Pooled sandboxes count against the host's capacity like any other.

use fluid_proto::model::Name;
use serde::{Deserialize, Serialize};

use super::templates::check_shape;
use super::{ConfigError, invalid};

/// Idle sandboxes of one image and shape kept ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolShape {
    pub image: Name,
    pub cpus: u32,
    pub memory_mb: u64,
    /// How many wait ready (0-64).
    pub size: u32,
}

/// `[pool]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolConfig {
    /// Default none: every create restores or boots.
    pub shapes: Vec<PoolShape>,
}

/// Absent keys stay absent when serialised, so figment merges key by key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    #[serde(skip_serializing_if = "Option::is_none")]
    shapes: Option<Vec<PoolShape>>,
}

impl RawPool {
    /// Checks the table; `images` are the configured image names.
    pub(super) fn validate(self, images: &[&Name]) -> Result<PoolConfig, ConfigError> {
        let shapes = self.shapes.unwrap_or_default();
        for (i, s) in shapes.iter().enumerate() {
            check_shape("pool.shapes", images, &s.image, s.cpus, s.memory_mb)?;
            if s.size > 64 {
                return Err(invalid("pool.shapes", "size must be 0-64"));
            }
            let same = |o: &PoolShape| {
                o.image == s.image && o.cpus == s.cpus && o.memory_mb == s.memory_mb
            };
            if shapes[..i].iter().any(same) {
                return Err(invalid(
                    "pool.shapes",
                    format!(
                        "{} with {} vCPUs and {} MiB is listed twice",
                        s.image, s.cpus, s.memory_mb
                    ),
                ));
            }
        }
        Ok(PoolConfig { shapes })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    const BASE: &str = "host_name = \"h\"\n[tls]\nca_cert = \"/a\"\ncert = \"/b\"\nkey = \"/c\"\n\
        [[images]]\nname = \"debian-12\"\npath = \"/i.qcow2\"\n[pool]\n";

    #[test]
    fn shapes_are_read_and_checked() {
        assert!(
            AgentConfig::from_toml(BASE)
                .expect("defaults")
                .pool
                .shapes
                .is_empty()
        );
        let one = "shapes = [{ image = \"debian-12\", cpus = 1, memory_mb = 512, size = 2 }]";
        let c = AgentConfig::from_toml(&format!("{BASE}{one}\n")).expect("one shape");
        assert_eq!(c.pool.shapes.len(), 1);
        assert_eq!(c.pool.shapes[0].size, 2);
        for bad in [
            "shapes = [{ image = \"nope\", cpus = 1, memory_mb = 512, size = 1 }]",
            "shapes = [{ image = \"debian-12\", cpus = 0, memory_mb = 512, size = 1 }]",
            "shapes = [{ image = \"debian-12\", cpus = 1, memory_mb = 512, size = 65 }]",
            "shapes = [{ image = \"debian-12\", cpus = 1, memory_mb = 512 }]",
            "shapes = [{ image = \"debian-12\", cpus = 1, memory_mb = 512, size = 1 }, \
             { image = \"debian-12\", cpus = 1, memory_mb = 512, size = 2 }]",
        ] {
            let e = AgentConfig::from_toml(&format!("{BASE}{bad}\n")).expect_err(bad);
            assert!(e.to_string().contains("pool"), "{bad}: {e}");
        }
    }
}
