//! The device-mapper ioctl interface (include/uapi/linux/dm-ioctl.h), just
//! the three calls that make a verity device: DM_DEV_CREATE, DM_TABLE_LOAD
//! and DM_DEV_SUSPEND (which, without the suspend flag, resumes, i.e.
//! activates the loaded table). The only unsafe code of the boot module.

use std::fs::File;
use std::os::fd::AsRawFd;

/// `struct dm_ioctl` is 312 bytes; `struct dm_target_spec` 40.
const DM_IOCTL_SIZE: usize = 312;
const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_NAME_LEN: usize = 128;
const DM_UUID_LEN: usize = 129;

const DM_DEV_CREATE_CMD: u64 = 3;
const DM_DEV_SUSPEND_CMD: u64 = 6;
const DM_TABLE_LOAD_CMD: u64 = 9;

/// DM_READONLY_FLAG: the table (and so the device) is read-only.
const DM_READONLY_FLAG: u32 = 1 << 0;

/// `_IOWR(0xfd, nr, struct dm_ioctl)`.
const fn dm_request(nr: u64) -> u64 {
    (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | nr
}

/// One target line of a table: `start length type params`.
#[derive(Debug, Clone)]
pub struct Target {
    pub start: u64,
    pub length: u64,
    pub kind: String,
    pub params: String,
}

/// Build the ioctl buffer: the header, then for a table load the target
/// specs each followed by its NUL-terminated, 8-byte aligned parameters.
fn buffer(name: &str, uuid: &str, flags: u32, targets: &[Target]) -> std::io::Result<Vec<u8>> {
    if name.len() >= DM_NAME_LEN || uuid.len() >= DM_UUID_LEN {
        return Err(std::io::Error::other("device-mapper name or uuid too long"));
    }
    let mut data = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let mut params = t.params.as_bytes().to_vec();
        params.push(0);
        while !(DM_TARGET_SPEC_SIZE + params.len()).is_multiple_of(8) {
            params.push(0);
        }
        let next = if i + 1 == targets.len() {
            0
        } else {
            (DM_TARGET_SPEC_SIZE + params.len()) as u32
        };
        data.extend_from_slice(&t.start.to_ne_bytes());
        data.extend_from_slice(&t.length.to_ne_bytes());
        data.extend_from_slice(&0i32.to_ne_bytes()); // status
        data.extend_from_slice(&next.to_ne_bytes());
        let mut ty = [0u8; 16];
        let k = t.kind.as_bytes();
        ty[..k.len().min(15)].copy_from_slice(&k[..k.len().min(15)]);
        data.extend_from_slice(&ty);
        data.extend_from_slice(&params);
    }
    // Room for the kernel to answer (it writes status back into the buffer).
    let total = DM_IOCTL_SIZE + data.len() + 4096;
    let mut buf = vec![0u8; total];
    // version 4.0.0: the kernel accepts any 4.x request.
    buf[0..4].copy_from_slice(&4u32.to_ne_bytes());
    buf[12..16].copy_from_slice(&(total as u32).to_ne_bytes()); // data_size
    buf[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_start
    buf[20..24].copy_from_slice(&(targets.len() as u32).to_ne_bytes()); // target_count
    buf[28..32].copy_from_slice(&flags.to_ne_bytes());
    buf[48..48 + name.len()].copy_from_slice(name.as_bytes());
    buf[176..176 + uuid.len()].copy_from_slice(uuid.as_bytes());
    buf[DM_IOCTL_SIZE..DM_IOCTL_SIZE + data.len()].copy_from_slice(&data);
    Ok(buf)
}

fn ioctl(control: &File, nr: u64, buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: `buf` is a live, writable buffer laid out as `struct dm_ioctl`
    // followed by its payload; its `data_size` field says exactly how many
    // bytes the kernel may read and write, and the buffer is at least that
    // long. The fd is an open /dev/mapper/control.
    let rc = unsafe { libc::ioctl(control.as_raw_fd(), dm_request(nr) as _, buf.as_mut_ptr()) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Create device `name`, load `targets` read-only and activate it. Returns
/// the new device's (major, minor).
pub fn create_readonly(
    control: &File,
    name: &str,
    uuid: &str,
    targets: &[Target],
) -> std::io::Result<(u32, u32)> {
    let mut b = buffer(name, uuid, 0, &[])?;
    ioctl(control, DM_DEV_CREATE_CMD, &mut b)
        .map_err(|e| std::io::Error::new(e.kind(), format!("DM_DEV_CREATE {name}: {e}")))?;
    let dev = u64::from_ne_bytes(b[40..48].try_into().unwrap_or_default());
    let mut b = buffer(name, "", DM_READONLY_FLAG, targets)?;
    ioctl(control, DM_TABLE_LOAD_CMD, &mut b).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("DM_TABLE_LOAD {name} (kernel log says why): {e}"),
        )
    })?;
    let mut b = buffer(name, "", 0, &[])?;
    ioctl(control, DM_DEV_SUSPEND_CMD, &mut b).map_err(|e| {
        std::io::Error::new(e.kind(), format!("DM_DEV_SUSPEND (resume) {name}: {e}"))
    })?;
    // The kernel's huge_encode_dev: minor low 8 bits | major << 8 | minor
    // high bits << 12 (see new_encode_dev in include/linux/kdev_t.h).
    let major = ((dev & 0xfff00) >> 8) as u32;
    let minor = ((dev & 0xff) | ((dev >> 12) & 0xfff00)) as u32;
    Ok((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_numbers_match_the_header() {
        // DM_DEV_CREATE = _IOWR(0xfd, 3, struct dm_ioctl) = 0xc138fd03.
        assert_eq!(dm_request(DM_DEV_CREATE_CMD), 0xc138_fd03);
        assert_eq!(dm_request(DM_TABLE_LOAD_CMD), 0xc138_fd09);
        assert_eq!(dm_request(DM_DEV_SUSPEND_CMD), 0xc138_fd06);
    }

    #[test]
    fn table_layout() {
        let t = Target {
            start: 0,
            length: 8,
            kind: "verity".into(),
            params: "1 8:1 8:1 4096 4096 1 1 sha256 aa -".into(),
        };
        let b = buffer("usr", "", DM_READONLY_FLAG, &[t]).unwrap();
        assert_eq!(&b[48..51], b"usr");
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(&b[DM_IOCTL_SIZE + 24..DM_IOCTL_SIZE + 30], b"verity");
        assert_eq!(&b[DM_IOCTL_SIZE + 40..DM_IOCTL_SIZE + 41], b"1");
        assert_eq!(
            u32::from_ne_bytes(b[12..16].try_into().unwrap()) as usize,
            b.len()
        );
    }
}
