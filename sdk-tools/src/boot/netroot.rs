//! USR from a file instead of a partition: what the init does for the
//! netboot set and the live ISO (`build_image --format pxe|iso`).
//!
//! `sdk.usr-url=` on the kernel command line says where the USR image (the
//! filesystem with its verity tree appended, as in a USR partition) is:
//! - `tftp://SERVER/PATH`: fetched over TFTP (RFC 1350, with the block
//!   size and transfer size options of RFCs 2348/2349) into memory, after
//!   the interface is configured from `ip=` (the iPXE script passes its
//!   DHCP lease that way);
//! - `http://SERVER[:PORT]/PATH`: the same over HTTP;
//! - `cdrom:/PATH`: a file on the first ISO 9660 medium, read in place.
//!
//! The file is attached to a read-only loop device, which the init then
//! treats like USR-A: dm-verity with the command line's root hash, so a
//! changed byte anywhere stops the boot just as on a disk.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the USR image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsrUrl {
    Tftp { server: Ipv4Addr, path: String },
    Http(String),
    Cdrom(String),
}

impl std::fmt::Display for UsrUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UsrUrl::Tftp { server, path } => write!(f, "tftp://{server}/{path}"),
            UsrUrl::Http(u) => f.write_str(u),
            UsrUrl::Cdrom(p) => write!(f, "cdrom:{p}"),
        }
    }
}

impl UsrUrl {
    pub fn parse(s: &str) -> Result<UsrUrl, String> {
        if let Some(rest) = s.strip_prefix("tftp://") {
            let (host, path) = rest
                .split_once('/')
                .ok_or_else(|| format!("sdk.usr-url `{s}`: no file after the server"))?;
            let server = host.parse().map_err(|_| {
                format!("sdk.usr-url `{s}`: the TFTP server must be an IPv4 address")
            })?;
            Ok(UsrUrl::Tftp {
                server,
                path: path.to_string(),
            })
        } else if s.starts_with("http://") {
            Ok(UsrUrl::Http(s.to_string()))
        } else if let Some(p) = s.strip_prefix("cdrom:") {
            if !p.starts_with('/') {
                return Err(format!(
                    "sdk.usr-url `{s}`: name the file on the medium from its root (cdrom:/PATH)"
                ));
            }
            Ok(UsrUrl::Cdrom(p.to_string()))
        } else {
            Err(format!(
                "sdk.usr-url `{s}`: use tftp://SERVER/PATH, http://SERVER/PATH or cdrom:/PATH"
            ))
        }
    }

    /// Whether the interface must be up first.
    pub fn needs_network(&self) -> bool {
        !matches!(self, UsrUrl::Cdrom(_))
    }
}

/// A static IPv4 configuration: the kernel's `ip=` syntax,
/// `CLIENT:SERVER:GATEWAY:NETMASK:HOSTNAME:DEVICE:AUTOCONF` (trailing
/// fields may be left out; an empty device means the first Ethernet one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub client: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub netmask: Ipv4Addr,
    pub device: Option<String>,
}

impl IpConfig {
    pub fn parse(s: &str) -> Result<IpConfig, String> {
        let static_only = || {
            format!(
                "ip=`{s}`: sdk-init needs a static address (CLIENT:SERVER:GATEWAY:NETMASK::DEVICE:off); \
                 an iPXE script passes its lease as ip=${{ip}}::${{gateway}}:${{netmask}}"
            )
        };
        if matches!(
            s,
            "dhcp" | "on" | "any" | "bootp" | "rarp" | "both" | "dhcp6" | "auto6"
        ) {
            return Err(static_only());
        }
        let f: Vec<&str> = s.split(':').collect();
        let addr = |i: usize, what: &str| -> Result<Option<Ipv4Addr>, String> {
            match f.get(i).copied().filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("ip=`{s}`: the {what} `{v}` is not an IPv4 address")),
            }
        };
        let client = addr(0, "client address")?.ok_or_else(static_only)?;
        let netmask = addr(3, "netmask")?.unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
        Ok(IpConfig {
            client,
            gateway: addr(2, "gateway")?,
            netmask,
            device: f.get(5).filter(|d| !d.is_empty()).map(|d| d.to_string()),
        })
    }
}

/// The sorted names in `dir` (`/sys/class/net`, `/sys/class/block`).
fn names_in(dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `find()` until it finds something or `timeout` passes (devices appear
/// as their drivers probe); `missing` says what did not appear.
fn wait_until<T>(
    timeout: Duration,
    missing: &str,
    mut find: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(x) = find() {
            return Ok(x);
        }
        if start.elapsed() > timeout {
            return Err(format!("{missing} within {}s", timeout.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first Ethernet interface (`/sys/class/net/*/type` 1) but
/// loopback, waiting up to `timeout` for its driver.
fn first_ethernet(timeout: Duration) -> Result<String, String> {
    wait_until(
        timeout,
        "no network interface appeared (is the NIC's driver, e.g. virtio_net, in the kernel?)",
        || {
            names_in("/sys/class/net").into_iter().find(|n| {
                n != "lo"
                    && std::fs::read_to_string(format!("/sys/class/net/{n}/type"))
                        .is_ok_and(|t| t.trim() == "1")
            })
        },
    )
}

/// Bring the interface up as `ip=` says. Returns its name.
pub fn configure_network(ip: &IpConfig, timeout: Duration) -> Result<String, String> {
    let dev = match &ip.device {
        Some(d) => d.clone(),
        None => first_ethernet(timeout)?,
    };
    sdk_common::linux::ipv4_configure(&dev, ip.client, ip.netmask, ip.gateway)
        .map_err(|e| format!("configure {dev} as {}: {e}", ip.client))?;
    Ok(dev)
}

const TFTP_RRQ: u16 = 1;
const TFTP_DATA: u16 = 3;
const TFTP_ACK: u16 = 4;
const TFTP_ERROR: u16 = 5;
const TFTP_OACK: u16 = 6;
/// The largest block that fits an Ethernet frame with IP and UDP headers
/// (and the largest QEMU's TFTP server sends).
const TFTP_BLKSIZE: usize = 1428;

/// The read request: `path` in octet mode, asking for big blocks and the
/// file's size.
pub fn tftp_request(path: &str) -> Vec<u8> {
    let mut p = TFTP_RRQ.to_be_bytes().to_vec();
    for field in [
        path,
        "octet",
        "blksize",
        &TFTP_BLKSIZE.to_string(),
        "tsize",
        "0",
    ] {
        p.extend_from_slice(field.as_bytes());
        p.push(0);
    }
    p
}

/// The options of an OACK packet's body (`name\0value\0...`), names in
/// lower case.
pub fn tftp_options(body: &[u8]) -> BTreeMap<String, String> {
    let fields: Vec<String> = body
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    fields
        .chunks(2)
        .filter(|c| c.len() == 2 && !c[0].is_empty())
        .map(|c| (c[0].to_ascii_lowercase(), c[1].clone()))
        .collect()
}

/// Fetch `path` from the TFTP server at `server` into `out`. Returns
/// the bytes written. Each block is acknowledged once: QEMU's server
/// answers every ACK with the next block whatever its number, so a
/// repeated ACK would skip data; a lost block times out instead.
pub fn tftp_get(
    server: Ipv4Addr,
    path: &str,
    out: &mut impl Write,
    timeout: Duration,
) -> Result<u64, String> {
    tftp_get_at(SocketAddrV4::new(server, 69), path, out, timeout)
}

/// [`tftp_get`] from a server listening at `first`; a block not there
/// within `timeout` (5 s at most) ends the transfer.
fn tftp_get_at(
    first: SocketAddrV4,
    path: &str,
    out: &mut impl Write,
    timeout: Duration,
) -> Result<u64, String> {
    let server = *first.ip();
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("open a UDP socket: {e}"))?;
    sock.set_read_timeout(Some(timeout.min(Duration::from_secs(5))))
        .map_err(|e| format!("UDP socket: {e}"))?;
    let request = tftp_request(path);
    let err = |what: String| format!("tftp://{server}/{path}: {what}");
    let mut peer: Option<std::net::SocketAddr> = None;
    let mut blksize = 512usize;
    let mut expected: u16 = 1;
    let mut total = 0u64;
    let mut size: Option<u64> = None;
    let mut buf = vec![0u8; 4 + 65464];
    let start = Instant::now();
    let mut tries = 0;
    sock.send_to(&request, first)
        .map_err(|e| err(format!("send the request: {e}")))?;
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Only the request is sent again: it starts a new transfer.
                if peer.is_none() && tries < 3 && start.elapsed() < timeout {
                    tries += 1;
                    sock.send_to(&request, first)
                        .map_err(|e| err(format!("send the request: {e}")))?;
                    continue;
                }
                return Err(err(format!(
                    "the server stopped answering after {total} bytes"
                )));
            }
            Err(e) => return Err(err(format!("receive: {e}"))),
        };
        if from.ip() != std::net::IpAddr::V4(server) || n < 4 {
            continue;
        }
        if let Some(p) = peer
            && p != from
        {
            continue;
        }
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let num = u16::from_be_bytes([buf[2], buf[3]]);
        match op {
            TFTP_ERROR => {
                let msg = String::from_utf8_lossy(&buf[4..n]);
                return Err(err(format!(
                    "the server says: {} (error {num})",
                    msg.trim_end_matches('\0')
                )));
            }
            TFTP_OACK if peer.is_none() => {
                let opts = tftp_options(&buf[2..n]);
                if let Some(b) = opts.get("blksize").and_then(|v| v.parse().ok()) {
                    blksize = b;
                }
                size = opts.get("tsize").and_then(|v| v.parse().ok());
                peer = Some(from);
                sock.send_to(&[0, TFTP_ACK as u8, 0, 0], from)
                    .map_err(|e| err(format!("send ACK: {e}")))?;
            }
            TFTP_DATA if num == expected => {
                peer = Some(from);
                let data = &buf[4..n];
                out.write_all(data)
                    .map_err(|e| err(format!("store block {num}: {e}")))?;
                total += data.len() as u64;
                let mut ack = vec![0, TFTP_ACK as u8];
                ack.extend_from_slice(&num.to_be_bytes());
                sock.send_to(&ack, from)
                    .map_err(|e| err(format!("send ACK: {e}")))?;
                if data.len() < blksize {
                    break;
                }
                expected = expected.wrapping_add(1);
            }
            TFTP_DATA => {
                return Err(err(format!(
                    "block {num} came where block {expected} was due (a block was lost); boot again"
                )));
            }
            _ => continue,
        }
        if start.elapsed() > timeout {
            return Err(err(format!(
                "not done after {}s ({total} bytes)",
                timeout.as_secs()
            )));
        }
    }
    if let Some(s) = size
        && s != total
    {
        return Err(err(format!(
            "the server announced {s} bytes and sent {total}"
        )));
    }
    Ok(total)
}

/// Fetch `url` over HTTP into `out`.
fn http_get(url: &str, out: &mut impl Write) -> Result<u64, String> {
    let origin = super::fetch::Origin::Url(url.to_string());
    let mut r = origin.open().map_err(|e| e.to_string())?;
    std::io::copy(&mut r, out).map_err(|e| format!("{url}: {e}"))
}

/// Where a fetched image is kept: in memory (the initramfs's /run, which
/// the OS gets as its /run).
const FETCHED: &str = "/run/sdk-init/usr.img";
/// Where the medium of `cdrom:` is mounted.
const MEDIA: &str = "/run/sdk-init/media";

/// The first block device holding an ISO 9660 filesystem (`CD001` at
/// byte 32769), waiting up to `timeout`.
fn find_iso9660(timeout: Duration) -> Result<String, String> {
    use std::os::unix::fs::FileExt;
    wait_until(
        timeout,
        "no ISO 9660 medium appeared (is the CD drive's driver, e.g. sr_mod and ahci or ata_piix, in the kernel?)",
        || {
            names_in("/sys/class/block").into_iter().find(|n| {
                let mut magic = [0u8; 5];
                std::fs::File::open(format!("/dev/{n}"))
                    .and_then(|f| f.read_exact_at(&mut magic, 32769))
                    .is_ok()
                    && &magic == b"CD001"
            })
        },
    )
}

/// The USR image file `url` names, on this machine: fetched into memory,
/// or found on the mounted medium. Says on the console what it does.
pub fn usr_file(
    url: &UsrUrl,
    ip: Option<&IpConfig>,
    timeout: Duration,
    say: &dyn Fn(&str),
) -> Result<PathBuf, String> {
    if url.needs_network() {
        let ip = ip.ok_or("sdk.usr-url= fetches over the network, but the command line has no ip=CLIENT::GATEWAY:NETMASK")?;
        let dev = configure_network(ip, timeout)?;
        say(&format!("sdk-init: {dev} is {}", ip.client));
    }
    match url {
        UsrUrl::Cdrom(path) => {
            let dev = find_iso9660(timeout)?;
            std::fs::create_dir_all(MEDIA).map_err(|e| format!("mkdir {MEDIA}: {e}"))?;
            nix::mount::mount(
                Some(format!("/dev/{dev}").as_str()),
                MEDIA,
                Some("iso9660"),
                nix::mount::MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| format!("mount /dev/{dev} (iso9660): {e}"))?;
            let file = Path::new(MEDIA).join(path.trim_start_matches('/'));
            if !file.is_file() {
                return Err(format!("the medium on /dev/{dev} holds no {path}"));
            }
            say(&format!("sdk-init: USR image {path} on /dev/{dev}"));
            Ok(file)
        }
        UsrUrl::Tftp { .. } | UsrUrl::Http(_) => {
            say(&format!("sdk-init: fetching USR from {url}"));
            let dest = Path::new(FETCHED);
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
            }
            let f = std::fs::File::create(dest).map_err(|e| format!("create {FETCHED}: {e}"))?;
            let t = Instant::now();
            let n = fetch_into(url, f, timeout)?;
            let secs = t.elapsed().as_secs_f64();
            say(&format!(
                "sdk-init: fetched {} MiB in {secs:.1}s ({:.1} MiB/s)",
                n >> 20,
                n as f64 / 1048576.0 / secs.max(0.001)
            ));
            Ok(dest.to_path_buf())
        }
    }
}

/// Fetch `url` into `file`; a `.zst` file is unpacked as it arrives.
/// Returns the bytes received.
fn fetch_into(url: &UsrUrl, file: std::fs::File, timeout: Duration) -> Result<u64, String> {
    fn get(url: &UsrUrl, out: &mut impl Write, timeout: Duration) -> Result<u64, String> {
        let n = match url {
            UsrUrl::Tftp { server, path } => tftp_get(*server, path, out, timeout * 10)?,
            UsrUrl::Http(u) => http_get(u, out)?,
            UsrUrl::Cdrom(_) => return Err("a medium is read in place, not fetched".into()),
        };
        // A decoder's flush unpacks what it holds and flushes the file.
        out.flush()
            .map_err(|e| format!("unpack {url} into {FETCHED}: {e}"))?;
        Ok(n)
    }
    let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
    if url.to_string().ends_with(".zst") {
        let mut dec =
            zstd::stream::write::Decoder::new(file).map_err(|e| format!("unpack {url}: {e}"))?;
        get(url, &mut dec, timeout)
    } else {
        get(url, &mut file, timeout)
    }
}

/// Attach `file` read-only to a loop device: its name (`loop0`) and
/// device number.
pub fn attach(file: &Path) -> Result<(String, u32, u32), String> {
    use std::os::fd::AsFd;
    let f = std::fs::File::open(file).map_err(|e| format!("open {}: {e}", file.display()))?;
    let n = sdk_common::linux::loop_attach(f.as_fd(), 0).map_err(|e| {
        format!(
            "attach {} to a loop device: {e} (is the loop module in the kernel?)",
            file.display()
        )
    })?;
    Ok((format!("loop{n}"), 7, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usr_urls_parse_or_say_what_is_wrong() {
        assert_eq!(
            UsrUrl::parse("tftp://10.0.2.2/a/usr.img").unwrap(),
            UsrUrl::Tftp {
                server: Ipv4Addr::new(10, 0, 2, 2),
                path: "a/usr.img".into()
            }
        );
        assert_eq!(
            UsrUrl::parse("cdrom:/sdk/usr.img").unwrap(),
            UsrUrl::Cdrom("/sdk/usr.img".into())
        );
        assert!(
            UsrUrl::parse("http://10.0.2.2:8080/u")
                .unwrap()
                .needs_network()
        );
        assert!(!UsrUrl::parse("cdrom:/u").unwrap().needs_network());
        for bad in [
            "tftp://server.example/x",
            "tftp://10.0.2.2",
            "ftp://x/y",
            "cdrom:u",
        ] {
            assert!(UsrUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ip_takes_the_kernel_syntax_and_refuses_dhcp() {
        let c = IpConfig::parse("10.0.2.15:10.0.2.2:10.0.2.2:255.255.255.0::eth0:off").unwrap();
        assert_eq!(c.client, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(c.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(c.device.as_deref(), Some("eth0"));
        let c = IpConfig::parse("192.168.1.9::::").unwrap();
        assert_eq!(c.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!((c.gateway, c.device), (None, None));
        let e = IpConfig::parse("dhcp").unwrap_err();
        assert!(e.contains("static address"), "{e}");
        assert!(IpConfig::parse("10.0.2.15::10.0.2:").is_err());
    }

    #[test]
    fn the_request_asks_for_big_blocks_and_the_size() {
        let r = tftp_request("x/usr.img");
        assert_eq!(&r[..2], &[0, 1]);
        assert_eq!(
            &r[2..],
            b"x/usr.img\x00octet\x00blksize\x001428\x00tsize\x000\x00".as_slice()
        );
        let o = tftp_options(b"blksize\x001428\x00TSIZE\x00123\x00");
        assert_eq!(o["blksize"], "1428");
        assert_eq!(o["tsize"], "123");
    }

    /// A TFTP server of the kind QEMU has (every ACK gets the next block,
    /// replies from port 69's socket) on the loopback, serving `data`.
    fn serve(data: Vec<u8>, blksize: usize, drop_block: Option<u16>) -> u16 {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let (_, client) = sock.recv_from(&mut buf).unwrap();
            let mut oack = vec![0, 6];
            oack.extend_from_slice(
                format!("blksize\0{blksize}\0tsize\0{}\0", data.len()).as_bytes(),
            );
            sock.send_to(&oack, client).unwrap();
            let mut block: usize = 0;
            loop {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    return;
                };
                if n < 4 || buf[1] != 4 {
                    continue;
                }
                let start = block * blksize;
                if start > data.len() {
                    return;
                }
                let chunk = &data[start..(start + blksize).min(data.len())];
                let num = ((block + 1) & 0xffff) as u16;
                let mut pkt = vec![0, 3];
                pkt.extend_from_slice(&num.to_be_bytes());
                pkt.extend_from_slice(chunk);
                if drop_block != Some(num) {
                    sock.send_to(&pkt, client).unwrap();
                }
                block += 1;
                if chunk.len() < blksize {
                    return;
                }
            }
        });
        port
    }

    fn get_from(port: u16, timeout: Duration) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        tftp_get_at(
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
            "f",
            &mut out,
            timeout,
        )
        .map(|_| out)
    }

    #[test]
    fn a_file_of_many_blocks_arrives_whole_across_the_block_number_wrap() {
        // 70,000 blocks of 8 bytes: the 16-bit block number wraps.
        let data: Vec<u8> = (0..70_000u32 * 8 + 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let port = serve(data.clone(), 8, None);
        assert_eq!(get_from(port, Duration::from_secs(60)).unwrap(), data);
    }

    #[test]
    fn a_zst_image_is_unpacked_as_it_arrives_and_a_broken_one_fails() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 97) as u8).collect();
        let packed = zstd::encode_all(&data[..], 3).unwrap();
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        let mut broken = packed.clone();
        let mid = broken.len() / 2;
        broken[mid] ^= 0xff;
        std::thread::spawn(move || {
            for (req, body) in server.incoming_requests().zip([packed, broken]) {
                let _ = req.respond(tiny_http::Response::from_data(body));
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let url = UsrUrl::Http(format!("http://127.0.0.1:{port}/usr.ext4.zst"));
        let out = dir.path().join("usr.img");
        let n = fetch_into(
            &url,
            std::fs::File::create(&out).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(n < data.len() as u64);
        assert_eq!(std::fs::read(&out).unwrap(), data);
        let e = fetch_into(
            &url,
            std::fs::File::create(&out).unwrap(),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(e.contains("usr.ext4.zst"), "{e}");
    }

    #[test]
    fn a_lost_block_fails_rather_than_skipping_data() {
        let data = vec![5u8; 64];
        let port = serve(data, 8, Some(3));
        let e = get_from(port, Duration::from_millis(500)).unwrap_err();
        assert!(e.contains("stopped answering"), "{e}");
    }
}
