//! What this host has and what the agent has promised: `GetStatus`'s figures.

use fluid_proto::model::ImageInfo;

use super::Sandboxes;
use crate::error::ServiceError;
use crate::hypervisor::Hypervisor;
use crate::images;

/// Host capacity and what this agent has promised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capacity {
    pub cpus_total: u32,
    /// Promised to sandboxes and warm pool members.
    pub cpus_reserved: u32,
    pub memory_mb_total: u64,
    /// Promised to sandboxes and warm pool members.
    pub memory_mb_reserved: u64,
    pub memory_mb_free: u64,
    /// Sandboxes (warm pool members are not counted: they are nobody's yet).
    pub sandboxes: u32,
    pub images: Vec<String>,
}

impl<H: Hypervisor> Sandboxes<H> {
    /// Totals (config override or node info), promises (sum over records, warm pool
    /// members included), free memory.
    pub async fn capacity(&self) -> Result<Capacity, ServiceError> {
        let node = self.hv.node_info().await?;
        let records = self.store.list().await?;
        let sandboxes = records.iter().filter(|r| !r.pooled).count();
        Ok(Capacity {
            cpus_total: self.config.cpus.unwrap_or(node.cpus),
            cpus_reserved: records.iter().map(|r| r.cpus).sum(),
            memory_mb_total: self.config.memory_mb.unwrap_or(node.memory_mb_total),
            memory_mb_reserved: records.iter().map(|r| r.memory_mb).sum(),
            memory_mb_free: node.memory_mb_free,
            sandboxes: u32::try_from(sandboxes).unwrap_or(u32::MAX),
            images: self
                .config
                .images
                .iter()
                .map(|i| i.name().to_string())
                .collect(),
        })
    }

    pub async fn images(&self) -> Result<Vec<ImageInfo>, ServiceError> {
        images::list(self.hv.as_ref(), &self.config.images).await
    }
}
