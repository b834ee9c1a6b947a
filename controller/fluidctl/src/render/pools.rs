//! A host's warm pool in one cell of `fluidctl hosts list`. Pure, like the rest of
//! [`super`].

use fluid_client::types::HostPool;

use super::NONE;

/// `512M`, or `2G` for whole GiB.
fn memory(mb: u64) -> String {
    if mb >= 1024 && mb.is_multiple_of(1024) {
        format!("{}G", mb / 1024)
    } else {
        format!("{mb}M")
    }
}

/// `1 hit`, `5 hits`.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `debian-12 1c/512M 2/2 ready, 5 hits 1 miss` per image and shape (`; ` between
/// them), with `+1 filling` when members are being restored; `-` without a pool.
pub fn pool_summary(pools: &[HostPool]) -> String {
    if pools.is_empty() {
        return NONE.to_owned();
    }
    pools
        .iter()
        .map(|p| {
            let filling = if p.filling > 0 {
                format!(" +{} filling", p.filling)
            } else {
                String::new()
            };
            format!(
                "{} {}c/{} {}/{} ready{filling}, {} {}",
                p.image,
                p.cpus,
                memory(p.memory_mb),
                p.ready,
                p.size,
                count(p.hits, "hit", "hits"),
                count(p.misses, "miss", "misses"),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(image: &str, cpus: u32, memory_mb: u64, ready: u32) -> HostPool {
        HostPool {
            image: image.to_owned(),
            cpus,
            memory_mb,
            size: 2,
            ready,
            filling: 2 - ready,
            hits: 5,
            misses: 1,
        }
    }

    #[test]
    fn one_cell_per_host() {
        assert_eq!(pool_summary(&[]), "-");
        assert_eq!(
            pool_summary(&[pool("debian-12", 1, 512, 2)]),
            "debian-12 1c/512M 2/2 ready, 5 hits 1 miss"
        );
        let mut big = pool("ubuntu", 2, 2048, 1);
        big.hits = 1;
        big.misses = 0;
        assert_eq!(
            pool_summary(&[pool("debian-12", 1, 512, 2), big]),
            "debian-12 1c/512M 2/2 ready, 5 hits 1 miss; \
             ubuntu 2c/2G 1/2 ready +1 filling, 1 hit 0 misses"
        );
        let mut odd = pool("x", 1, 1536, 0);
        odd.misses = 3;
        assert_eq!(
            pool_summary(&[odd]),
            "x 1c/1536M 0/2 ready +2 filling, 5 hits 3 misses"
        );
    }
}
