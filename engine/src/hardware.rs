//! What the machine has, from hwloc (via hwlocality): CPUs (processing units), the core and
//! NUMA node of each, memory per node. The topology is checked against it at start, and each
//! shard thread binds its memory to its CPU's NUMA node.

use hwlocality::{
    Topology,
    memory::binding::{MemoryBindingFlags, MemoryBindingPolicy},
    object::types::ObjectType,
};

/// One processing unit (what the OS calls a CPU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    /// OS index: what `[[shard]] cpu` names.
    pub os_index: u32,
    /// OS index of the physical core it belongs to.
    pub core: u32,
    /// OS index of its NUMA node.
    pub numa_node: u32,
    /// OS index of its package (socket).
    pub package: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumaNode {
    pub os_index: u32,
    pub memory_bytes: u64,
}

/// The machine as hwloc sees it.
#[derive(Debug, Clone)]
pub struct Hardware {
    pub cpu_model: String,
    pub packages: usize,
    pub cores: usize,
    pub cpus: Vec<Cpu>,
    pub numa_nodes: Vec<NumaNode>,
}

#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error("hwloc could not read the machine topology: {0}")]
    Load(String),
    #[error("hwloc could not bind shard memory to NUMA node {node}: {message}")]
    Bind { node: u32, message: String },
}

fn index(obj: &hwlocality::object::TopologyObject) -> u32 {
    obj.os_index().map_or(0, |i| i as u32)
}

impl Hardware {
    pub fn detect() -> Result<Hardware, HardwareError> {
        let topo = Topology::new().map_err(|e| HardwareError::Load(e.to_string()))?;
        let owner = |ty: ObjectType, pu: usize| {
            topo.objects_with_type(ty)
                .find(|o| o.cpuset().is_some_and(|set| set.is_set(pu)))
                .map_or(0, index)
        };
        let cpus = topo
            .objects_with_type(ObjectType::PU)
            .map(|pu| {
                let i = pu.os_index().unwrap_or(0);
                Cpu {
                    os_index: i as u32,
                    core: owner(ObjectType::Core, i),
                    numa_node: owner(ObjectType::NUMANode, i),
                    package: owner(ObjectType::Package, i),
                }
            })
            .collect();
        let numa_nodes = topo
            .objects_with_type(ObjectType::NUMANode)
            .map(|n| NumaNode {
                os_index: index(n),
                memory_bytes: n.total_memory(),
            })
            .collect();
        Ok(Hardware {
            cpu_model: cpu_model(),
            packages: topo.objects_with_type(ObjectType::Package).len(),
            cores: topo.objects_with_type(ObjectType::Core).len(),
            cpus,
            numa_nodes,
        })
    }

    pub fn cpu(&self, os_index: u32) -> Option<&Cpu> {
        self.cpus.iter().find(|c| c.os_index == os_index)
    }

    /// Every CPU's OS index, ascending.
    pub fn cpu_indices(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.cpus.iter().map(|c| c.os_index).collect();
        v.sort_unstable();
        v
    }
}

/// The "model name" line of /proc/cpuinfo, or "unknown".
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Binds the calling thread's future allocations to NUMA node `node`.
pub fn bind_thread_memory(node: u32) -> Result<(), HardwareError> {
    let topo = Topology::new().map_err(|e| HardwareError::Load(e.to_string()))?;
    let target = topo
        .objects_with_type(ObjectType::NUMANode)
        .find(|n| index(n) == node)
        .and_then(|n| n.nodeset())
        .ok_or_else(|| HardwareError::Bind {
            node,
            message: "no such node".into(),
        })?;
    topo.bind_memory(
        target,
        MemoryBindingPolicy::Bind,
        MemoryBindingFlags::THREAD,
    )
    .map_err(|e| HardwareError::Bind {
        node,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_every_online_cpu_with_a_node() {
        let hw = Hardware::detect().unwrap();
        let online = std::thread::available_parallelism().unwrap().get();
        assert!(
            hw.cpus.len() >= online,
            "{} cpus < {online} online",
            hw.cpus.len()
        );
        assert!(!hw.numa_nodes.is_empty());
        for cpu in &hw.cpus {
            assert!(
                hw.numa_nodes.iter().any(|n| n.os_index == cpu.numa_node),
                "{cpu:?}"
            );
        }
    }

    #[test]
    fn binds_memory_to_a_real_node() {
        let hw = Hardware::detect().unwrap();
        let node = hw.numa_nodes[0].os_index;
        std::thread::spawn(move || bind_thread_memory(node).unwrap())
            .join()
            .unwrap();
        assert!(bind_thread_memory(9_999).is_err());
    }
}
