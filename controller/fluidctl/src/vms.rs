//! `fluidctl vms`

use crate::{Ctx, emit, emit_json, render};

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let resp = ctx.client.list_vms().await?;
    if ctx.json {
        return emit_json(&resp);
    }
    emit(&render::vm_table(&resp.vms));
    for line in render::host_error_lines(&resp.host_errors) {
        eprintln!("{line}");
    }
    Ok(())
}
