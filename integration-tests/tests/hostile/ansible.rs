//! Agent-written Ansible content must never run on the controller host.
