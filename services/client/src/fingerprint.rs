//! This machine's fingerprint components, named as the Activation service matches them.

use licensing_domain::fingerprint::Component;

fn component(name: &str, value: Option<String>) -> Option<Component> {
    let value = value?.trim().to_owned();
    (!value.is_empty()).then(|| Component { name: name.into(), value })
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn command(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The components this platform offers: machine-id, hostname, the first non-loopback MAC, and
/// a board or disk serial where readable without privileges.
pub fn this_machine() -> Vec<Component> {
    let mut parts = vec![];
    #[cfg(target_os = "linux")]
    {
        parts.push(component("machine-id", read("/etc/machine-id").or_else(|| read("/var/lib/dbus/machine-id"))));
        parts.push(component(
            "board-serial",
            read("/sys/class/dmi/id/board_serial").or_else(|| read("/sys/class/dmi/id/product_uuid")),
        ));
        let mac = std::fs::read_dir("/sys/class/net").ok().and_then(|dir| {
            let mut names: Vec<String> =
                dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n != "lo").collect();
            names.sort();
            names
                .into_iter()
                .filter_map(|n| read(&format!("/sys/class/net/{n}/address")))
                .find(|m| m.trim() != "00:00:00:00:00:00")
        });
        parts.push(component("mac", mac));
    }
    #[cfg(target_os = "macos")]
    {
        let ioreg = command("ioreg", &["-rd1", "-c", "IOPlatformExpertDevice"]).unwrap_or_default();
        let field =
            |key: &str| ioreg.lines().find(|l| l.contains(key)).and_then(|l| l.split('"').nth(3)).map(str::to_owned);
        parts.push(component("machine-id", field("IOPlatformUUID")));
        parts.push(component("board-serial", field("IOPlatformSerialNumber")));
    }
    #[cfg(target_os = "windows")]
    {
        let guid = command("reg", &["query", r"HKLM\SOFTWARE\Microsoft\Cryptography", "/v", "MachineGuid"])
            .and_then(|out| out.split_whitespace().last().map(str::to_owned));
        parts.push(component("machine-id", guid));
        let serial =
            command("wmic", &["bios", "get", "serialnumber"]).and_then(|o| o.lines().nth(1).map(str::to_owned));
        parts.push(component("board-serial", serial));
    }
    let hostname = std::env::var("HOSTNAME").ok().or_else(|| command("hostname", &[]));
    parts.push(component("hostname", hostname));
    parts.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine_has_components_the_service_accepts() {
        let parts = super::this_machine();
        assert!(!parts.is_empty());
        assert!(licensing_domain::fingerprint::normalize(&parts).is_ok(), "{parts:?}");
    }
}
