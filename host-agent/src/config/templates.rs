//! The `[templates]` table of the agent's configuration: memory templates, from which
//! sandboxes are restored instead of cold-booted (`crate::templates`).
//!
//! ```toml
//! [templates]
//! enabled = true               # restore from a template when one is ready
//! shapes = [{ image = "debian-12", cpus = 1, memory_mb = 512 }]   # built at start
//! on_demand = true             # a create of another shape builds its template after it
//! max = 8                      # templates built at once, at most
//! build_timeout_secs = 600     # the template's boot, until its sshd is up
//! # dir = "/var/lib/fluid-agent/templates"
//! ```

use std::path::PathBuf;

use fluid_proto::model::Name;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

/// One shape whose template is built when the agent starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateShape {
    pub image: Name,
    pub cpus: u32,
    pub memory_mb: u64,
}

/// `[templates]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplatesConfig {
    /// Default true.
    pub enabled: bool,
    /// Default `<state_dir>/templates`.
    pub dir: Option<PathBuf>,
    /// Built when the agent starts. Default none.
    pub shapes: Vec<TemplateShape>,
    /// A create of a shape without a template builds it (after cold-booting). Default true.
    pub on_demand: bool,
    /// Builds at once, at most. Default 8.
    pub max: usize,
    /// How long a template's boot may take. Default 600.
    pub build_timeout_secs: u32,
}

impl Default for TemplatesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            shapes: Vec::new(),
            on_demand: true,
            max: 8,
            build_timeout_secs: 600,
        }
    }
}

/// Absent keys stay absent when serialised, so figment merges key by key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplates {
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shapes: Option<Vec<TemplateShape>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_demand: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    build_timeout_secs: Option<u32>,
}

/// A shape's image is configured, its vCPUs 1-256 and its memory 64 MiB-1 TiB (the
/// `[templates]` and `[pool]` tables' shapes).
pub(super) fn check_shape(
    field: &str,
    images: &[&Name],
    image: &Name,
    cpus: u32,
    memory_mb: u64,
) -> Result<(), ConfigError> {
    if !images.contains(&image) {
        return Err(invalid(field, format!("image {image} is not configured")));
    }
    if !(1..=256).contains(&cpus) || !(64..=1 << 20).contains(&memory_mb) {
        return Err(invalid(
            field,
            "cpus must be 1-256 and memory_mb 64-1048576",
        ));
    }
    Ok(())
}

impl RawTemplates {
    /// Checks the table; `images` are the configured image names.
    pub(super) fn validate(self, images: &[&Name]) -> Result<TemplatesConfig, ConfigError> {
        let d = TemplatesConfig::default();
        let dir = match self.dir {
            Some(dir) if !dir.is_absolute() => {
                return Err(invalid("templates.dir", "must be an absolute path"));
            }
            dir => dir,
        };
        let shapes = self.shapes.unwrap_or_default();
        for s in &shapes {
            check_shape("templates.shapes", images, &s.image, s.cpus, s.memory_mb)?;
        }
        let max = self.max.unwrap_or(d.max);
        if !(1..=64).contains(&max) {
            return Err(invalid("templates.max", "must be 1-64"));
        }
        let build_timeout_secs = self.build_timeout_secs.unwrap_or(d.build_timeout_secs);
        if !(10..=3600).contains(&build_timeout_secs) {
            return Err(invalid("templates.build_timeout_secs", "must be 10-3600"));
        }
        Ok(TemplatesConfig {
            enabled: self.enabled.unwrap_or(d.enabled),
            dir,
            shapes,
            on_demand: self.on_demand.unwrap_or(d.on_demand),
            max,
            build_timeout_secs,
        })
    }
}
