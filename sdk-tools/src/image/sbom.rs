//! `_sbom.json`: an SPDX 2.3 JSON document describing the image and the
//! packages installed into it, from the packages' own metadata. Deterministic:
//! the creation time is the build's SOURCE_DATE_EPOCH and the document
//! namespace derives from the inputs.
//!
//! Every package carries a package URL (purl) as an external reference
//! (`PACKAGE-MANAGER`/`purl`), so scanners can match it: the repo's own
//! recipes as `pkg:generic/<category>/<name>@<version>`, and the Debian
//! binary packages each recipe's closure imported as packages of their
//! own, `pkg:deb/debian/<name>@<version>?arch=<arch>`, which the recipe
//! CONTAINS.
//!
//! Spec: <https://spdx.github.io/spdx-spec/v2.3/> (document creation
//! information, package information, external references,
//! relationships); purl: <https://github.com/package-url/purl-spec>.

use serde_json::{Value, json};

use super::PackageInfo;

/// What the document describes.
pub struct ImageInfo<'a> {
    pub name: &'a str,
    pub os_id: &'a str,
    pub version: &'a str,
    pub board: &'a str,
    pub epoch: u64,
    /// A uuid derived from the inputs (the document namespace).
    pub namespace_uuid: uuid::Uuid,
}

/// SPDX ids allow letters, digits, `.` and `-` only.
fn spdx_id(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("SPDXRef-{kind}-{clean}")
}

/// Percent-encode what a purl component may not carry as is (the
/// purl spec: letters, digits and `.-_~` pass; `+` in Debian versions
/// and `:` of epochs are encoded).
fn purl_part(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `pkg:deb/debian/NAME@VERSION?arch=ARCH`.
pub fn deb_purl(name: &str, version: &str, arch: &str) -> String {
    format!(
        "pkg:deb/debian/{}@{}?arch={}",
        purl_part(name),
        purl_part(version),
        purl_part(arch)
    )
}

/// `pkg:generic/CATEGORY/NAME@VERSION` for a recipe `category/name`.
pub fn recipe_purl(name: &str, version: &str) -> String {
    let path: Vec<String> = name.split('/').map(purl_part).collect();
    format!("pkg:generic/{}@{}", path.join("/"), purl_part(version))
}

fn purl_ref(purl: String) -> Value {
    json!([{
        "referenceCategory": "PACKAGE-MANAGER",
        "referenceType": "purl",
        "referenceLocator": purl,
    }])
}

/// Render the SBOM.
pub fn spdx(image: &ImageInfo<'_>, packages: &[PackageInfo]) -> Value {
    let created = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(image.epoch),
    )
    .to_string();
    let image_id = spdx_id("Image", image.name);
    let mut pkgs = vec![json!({
        "SPDXID": image_id,
        "name": image.name,
        "versionInfo": image.version,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "comment": format!("{} disk image for board {}", image.os_id, image.board),
    })];
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    for p in packages {
        let id = spdx_id("Package", &p.name);
        let mut pkg = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": p.license.clone().unwrap_or_else(|| "NOASSERTION".into()),
            "copyrightText": "NOASSERTION",
        });
        if let Some(sum) = &p.sha256 {
            pkg["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": sum }]);
        }
        if p.name.contains('/') {
            pkg["externalRefs"] = purl_ref(recipe_purl(&p.name, &p.version));
        }
        if !p.arch.is_empty() {
            pkg["comment"] = json!(format!("architecture {}", p.arch));
        }
        pkgs.push(pkg);
        rels.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
        for deb in &p.debs {
            let deb_id = spdx_id(
                "Deb",
                &format!("{}-{}-{}", deb.package, deb.architecture, deb.version),
            );
            // One entry per .deb even when two recipes hold files of it.
            if !pkgs.iter().any(|x| x["SPDXID"] == deb_id.as_str()) {
                pkgs.push(json!({
                    "SPDXID": deb_id,
                    "name": deb.package,
                    "versionInfo": deb.version,
                    "supplier": "Organization: Debian",
                    "downloadLocation": "NOASSERTION",
                    "filesAnalyzed": false,
                    "licenseConcluded": "NOASSERTION",
                    "licenseDeclared": "NOASSERTION",
                    "copyrightText": "NOASSERTION",
                    "externalRefs": purl_ref(deb_purl(&deb.package, &deb.version, &deb.architecture)),
                }));
            }
            rels.push(json!({
                "spdxElementId": id,
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": deb_id,
            }));
        }
        for d in &p.depends {
            if packages.iter().any(|q| &q.name == d) {
                rels.push(json!({
                    "spdxElementId": id,
                    "relationshipType": "DEPENDS_ON",
                    "relatedSpdxElement": spdx_id("Package", d),
                }));
            }
        }
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", image.name, image.version),
        "documentNamespace": format!("urn:uuid:{}", image.namespace_uuid),
        "creationInfo": {
            "created": created,
            "creators": [format!("Tool: sdk-tools-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": pkgs,
        "relationships": rels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_has_the_required_fields_and_relationships() {
        let pkgs = vec![
            PackageInfo {
                name: "sys-apps/busybox".into(),
                version: "1.35".into(),
                arch: "amd64".into(),
                license: Some("GPL-2.0-only".into()),
                sha256: Some("00".repeat(32)),
                depends: vec![],
                debs: vec![],
                maintainer_scripts: Default::default(),
            },
            PackageInfo {
                name: "demo/hello".into(),
                version: "1".into(),
                arch: "amd64".into(),
                license: None,
                sha256: None,
                depends: vec!["sys-apps/busybox".into()],
                debs: vec![crate::packages::binpkg::DebInfo {
                    package: "libc6".into(),
                    version: "2.36-9+deb12u10".into(),
                    architecture: "amd64".into(),
                }],
                maintainer_scripts: Default::default(),
            },
        ];
        let doc = spdx(
            &ImageInfo {
                name: "demo_developer_image",
                os_id: "demo",
                version: "1.0.0",
                board: "amd64-usr",
                epoch: 0,
                namespace_uuid: uuid::Uuid::nil(),
            },
            &pkgs,
        );
        assert_eq!(doc["spdxVersion"], "SPDX-2.3");
        assert_eq!(doc["creationInfo"]["created"], "1970-01-01T00:00:00Z");
        // The image, two recipes, and the .deb one recipe holds.
        assert_eq!(doc["packages"].as_array().unwrap().len(), 4);
        assert_eq!(
            doc["packages"][1]["SPDXID"],
            "SPDXRef-Package-sys-apps-busybox"
        );
        let rels = doc["relationships"].as_array().unwrap();
        assert!(rels.iter().any(|r| r["relationshipType"] == "DEPENDS_ON"
            && r["relatedSpdxElement"] == "SPDXRef-Package-sys-apps-busybox"));
        let purl = |i: usize| doc["packages"][i]["externalRefs"][0]["referenceLocator"].clone();
        assert_eq!(purl(1), "pkg:generic/sys-apps/busybox@1.35");
        assert_eq!(purl(3), "pkg:deb/debian/libc6@2.36-9%2Bdeb12u10?arch=amd64");
        assert!(
            rels.iter()
                .any(|r| r["spdxElementId"] == "SPDXRef-Package-demo-hello"
                    && r["relationshipType"] == "CONTAINS"
                    && r["relatedSpdxElement"] == doc["packages"][3]["SPDXID"])
        );
    }

    #[test]
    fn purls_encode_what_the_spec_reserves() {
        assert_eq!(
            deb_purl("libstdc++6", "1:12.2.0-14", "arm64"),
            "pkg:deb/debian/libstdc%2B%2B6@1%3A12.2.0-14?arch=arm64"
        );
    }
}
