//! A reply as the legacy software wrote it: `reply.json` read and checked, and the files it
//! names read from the reply's own folder, never from outside it. Nothing here touches the
//! hub: whatever is wrong is a [`Refusal`] before any request is made.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::refusal::{Refusal, MAX_FILE_BYTES, MAX_REPLY_JSON_BYTES};
use super::walk::REPLY_STATUSES;
use crate::hubee::status::CaseStatus;
use crate::state::outbox::ReplyFile;

/// The reply file every reply folder holds.
pub const REPLY_JSON: &str = "reply.json";
/// PROTOCOL §5 Event: `message` and `comment` are at most 1000 characters; the comment also
/// carries our marker (at most ~140 characters), so the reply's own comment gets less.
pub const MAX_MESSAGE_CHARS: usize = 1000;
pub const MAX_COMMENT_CHARS: usize = 850;
/// PROTOCOL §5 Attachment.
const MAX_FILE_NAME_BYTES: usize = 255;
const MAX_TYPE_CHARS: usize = 100;
const MAX_MIME_CHARS: usize = 255;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyJson {
    #[serde(default)]
    case_id: Option<String>,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    attachments: Option<Vec<AttachmentJson>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachmentJson {
    #[serde(default)]
    file: Option<String>,
    #[serde(rename = "type", default)]
    type_: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
}

/// A well-formed reply (its case not yet looked up, its files not yet read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub case_id: Option<String>,
    pub external_id: Option<String>,
    pub status: Option<CaseStatus>,
    pub message: Option<String>,
    pub comment: Option<String>,
    pub attachments: Vec<ReplyAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyAttachment {
    pub file: String,
    pub type_: String,
    pub mime_type: String,
}

/// A file of the reply, read and hashed.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub meta: ReplyFile,
    pub data: Bytes,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn check_len(field: &'static str, value: &Option<String>, max: usize) -> Result<(), Refusal> {
    match value {
        Some(v) if v.chars().count() > max => Err(Refusal::TooLong {
            field,
            max,
            len: v.chars().count(),
        }),
        _ => Ok(()),
    }
}

/// Parses and checks `reply.json`: the JSON, a case named, an allowed status, something to
/// send, lengths, and each attachment's name, type and MIME type.
pub fn parse(raw: &[u8]) -> Result<Reply, Refusal> {
    let json: ReplyJson = serde_json::from_slice(raw).map_err(|e| Refusal::ReplyJsonInvalid {
        error: e.to_string(),
    })?;
    let case_id = non_empty(json.case_id);
    let external_id = non_empty(json.external_id);
    if case_id.is_none() && external_id.is_none() {
        return Err(Refusal::NoCase);
    }
    let status = match non_empty(json.status) {
        None => None,
        Some(s) => match s.parse::<CaseStatus>() {
            Ok(st) if REPLY_STATUSES.contains(&st) => Some(st),
            _ => return Err(Refusal::UnknownStatus { status: s }),
        },
    };
    // The message goes to the applicant as written: only surrounding blanks are dropped.
    let message = non_empty(json.message);
    let comment = non_empty(json.comment);
    check_len("message", &message, MAX_MESSAGE_CHARS)?;
    check_len("comment", &comment, MAX_COMMENT_CHARS)?;
    let mut attachments: Vec<ReplyAttachment> = Vec::new();
    for a in json.attachments.unwrap_or_default() {
        let file = a.file.unwrap_or_default();
        check_file_name(&file)?;
        let type_ = non_empty(a.type_).ok_or_else(|| Refusal::MissingField {
            file: file.clone(),
            field: "type",
        })?;
        let mime_type = non_empty(a.mime_type).ok_or_else(|| Refusal::MissingField {
            file: file.clone(),
            field: "mime_type",
        })?;
        check_len("type", &Some(type_.clone()), MAX_TYPE_CHARS)?;
        check_len("mime_type", &Some(mime_type.clone()), MAX_MIME_CHARS)?;
        if !looks_like_mime(&mime_type) {
            return Err(Refusal::BadMimeType {
                file,
                mime: mime_type,
            });
        }
        if attachments.iter().any(|x| x.file == file) {
            return Err(Refusal::DuplicateFile { file });
        }
        attachments.push(ReplyAttachment {
            file,
            type_,
            mime_type,
        });
    }
    if status.is_none() && message.is_none() && attachments.is_empty() {
        return Err(Refusal::NothingToSend);
    }
    Ok(Reply {
        case_id,
        external_id,
        status,
        message,
        comment,
        attachments,
    })
}

fn looks_like_mime(m: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    // Parameters (`; charset=utf-8`) are allowed after the type.
    let essence = m.split(';').next().unwrap_or("").trim();
    matches!(essence.split_once('/'), Some((t, s)) if token(t) && token(s))
}

/// A file name as `reply.json` gives it: a plain name in the reply's folder.
pub fn check_file_name(file: &str) -> Result<(), Refusal> {
    let refuse = |why_fr, why_en| {
        Err(Refusal::BadFileName {
            file: file.to_string(),
            why_fr,
            why_en,
        })
    };
    if file.is_empty() {
        return refuse("il est vide", "it is empty");
    }
    if file.contains('/') || file.contains('\\') {
        return refuse(
            "il contient un chemin (« / » ou « \\ »)",
            "it holds a path ('/' or '\\')",
        );
    }
    if file == "." || file == ".." {
        return refuse("il désigne un dossier", "it names a directory");
    }
    if file.chars().any(char::is_control) {
        return refuse(
            "il contient des caractères de contrôle",
            "it holds control characters",
        );
    }
    if file.len() > MAX_FILE_NAME_BYTES {
        return refuse("il dépasse 255 octets", "it is longer than 255 bytes");
    }
    if file == REPLY_JSON {
        return refuse(
            "reply.json est la réponse elle-même",
            "reply.json is the reply itself",
        );
    }
    Ok(())
}

/// Reads a file the reply names, from `dir` only: a symbolic link is followed only when it
/// stays inside `dir`; anything but a regular file of 1 byte to `limit` is refused.
pub async fn load_file(
    dir: &Path,
    att: &ReplyAttachment,
    limit: u64,
) -> Result<LoadedFile, Refusal> {
    check_file_name(&att.file)?;
    let file = att.file.clone();
    let path = dir.join(&att.file);
    let unreadable = |e: std::io::Error| Refusal::FileUnreadable {
        file: file.clone(),
        error: e.to_string(),
    };
    let link = match tokio::fs::symlink_metadata(&path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Refusal::MissingFile { file })
        }
        Err(e) => return Err(unreadable(e)),
    };
    let real: PathBuf = if link.file_type().is_symlink() {
        let target = match tokio::fs::canonicalize(&path).await {
            Ok(t) => t,
            // A dangling link: the file it names is missing (or outside, unreadable).
            Err(_) => return Err(Refusal::LinkOutside { file }),
        };
        let home = tokio::fs::canonicalize(dir).await.map_err(unreadable)?;
        if target.parent() != Some(home.as_path()) {
            return Err(Refusal::LinkOutside { file });
        }
        target
    } else {
        path
    };
    let meta = tokio::fs::metadata(&real).await.map_err(unreadable)?;
    if !meta.is_file() {
        return Err(Refusal::NotARegularFile { file });
    }
    if meta.len() > limit {
        return Err(Refusal::FileTooLarge {
            file,
            size: meta.len(),
            limit,
        });
    }
    let data = tokio::fs::read(&real).await.map_err(unreadable)?;
    if data.is_empty() {
        return Err(Refusal::EmptyFile { file });
    }
    if data.len() as u64 > limit {
        return Err(Refusal::FileTooLarge {
            file,
            size: data.len() as u64,
            limit,
        });
    }
    let sha256 = hex::encode(Sha256::digest(&data));
    Ok(LoadedFile {
        meta: ReplyFile {
            file: att.file.clone(),
            type_: att.type_.clone(),
            mime_type: att.mime_type.clone(),
            size: data.len() as u64,
            sha256,
            attachment_id: None,
            uploaded: false,
        },
        data: Bytes::from(data),
    })
}

/// Reads `reply.json` of a reply folder: its bytes (a regular file, not a link, at most
/// [`MAX_REPLY_JSON_BYTES`]).
pub async fn read_reply_json(dir: &Path) -> Result<Vec<u8>, Refusal> {
    let path = dir.join(REPLY_JSON);
    let meta = match tokio::fs::symlink_metadata(&path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Refusal::NoReplyJson),
        Err(e) => {
            return Err(Refusal::ReplyJsonUnreadable {
                error: e.to_string(),
            })
        }
    };
    if !meta.file_type().is_file() {
        return Err(Refusal::ReplyJsonNotAFile);
    }
    if meta.len() > MAX_REPLY_JSON_BYTES {
        return Err(Refusal::ReplyJsonTooLarge { size: meta.len() });
    }
    tokio::fs::read(&path)
        .await
        .map_err(|e| Refusal::ReplyJsonUnreadable {
            error: e.to_string(),
        })
}

/// The default size limit of one file (the démarche's own limit is not published to SIs).
pub fn file_limit() -> u64 {
    MAX_FILE_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_reply_parses() {
        let r = parse(
            br#"{"case_id":"c1","status":"DONE","message":"Votre acte est disponible",
                 "attachments":[{"file":"acte.pdf","type":"ActeEtatCivil-PDF","mime_type":"application/pdf"}]}"#,
        )
        .unwrap();
        assert_eq!(r.status, Some(CaseStatus::Done));
        assert_eq!(r.attachments[0].file, "acte.pdf");
    }

    #[test]
    fn hostile_file_names_are_refused() {
        for name in [
            "../../etc/passwd",
            "/etc/passwd",
            "..",
            ".",
            "a/b.pdf",
            "a\\b.pdf",
            "",
            "x\u{7}.pdf",
            "reply.json",
        ] {
            let json = serde_json::json!({"case_id":"c","attachments":[{"file":name,"type":"t","mime_type":"application/pdf"}]});
            let got = parse(json.to_string().as_bytes());
            assert!(
                matches!(got, Err(Refusal::BadFileName { .. })),
                "{name:?}: {got:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_and_statuses_are_refused() {
        assert!(matches!(
            parse(br#"{"case_id":"c","satus":"DONE"}"#),
            Err(Refusal::ReplyJsonInvalid { .. })
        ));
        assert!(matches!(
            parse(br#"{"case_id":"c","status":"CLOSED"}"#),
            Err(Refusal::UnknownStatus { .. })
        ));
        assert!(matches!(
            parse(br#"{"status":"DONE"}"#),
            Err(Refusal::NoCase)
        ));
        assert!(matches!(
            parse(br#"{"case_id":"c"}"#),
            Err(Refusal::NothingToSend)
        ));
        assert!(matches!(
            parse(b"not json"),
            Err(Refusal::ReplyJsonInvalid { .. })
        ));
    }

    #[test]
    fn attachments_need_type_and_mime_type() {
        assert!(matches!(
            parse(br#"{"case_id":"c","attachments":[{"file":"a.pdf","type":"t"}]}"#),
            Err(Refusal::MissingField {
                field: "mime_type",
                ..
            })
        ));
        assert!(matches!(
            parse(br#"{"case_id":"c","attachments":[{"file":"a.pdf","mime_type":"application/pdf"}]}"#),
            Err(Refusal::MissingField { field: "type", .. })
        ));
        assert!(matches!(
            parse(
                br#"{"case_id":"c","attachments":[{"file":"a.pdf","type":"t","mime_type":"pdf"}]}"#
            ),
            Err(Refusal::BadMimeType { .. })
        ));
    }

    #[tokio::test]
    async fn links_out_of_the_folder_are_refused_and_links_inside_are_followed() {
        let d = tempfile::tempdir().unwrap();
        let reply = d.path().join("r");
        std::fs::create_dir(&reply).unwrap();
        std::fs::write(d.path().join("secret.txt"), b"secret").unwrap();
        std::fs::write(reply.join("real.pdf"), b"%PDF-1.4").unwrap();
        std::os::unix::fs::symlink("../secret.txt", reply.join("out.pdf")).unwrap();
        std::os::unix::fs::symlink("real.pdf", reply.join("in.pdf")).unwrap();
        let att = |f: &str| ReplyAttachment {
            file: f.into(),
            type_: "t".into(),
            mime_type: "application/pdf".into(),
        };
        assert!(matches!(
            load_file(&reply, &att("out.pdf"), 1000).await,
            Err(Refusal::LinkOutside { .. })
        ));
        let ok = load_file(&reply, &att("in.pdf"), 1000).await.unwrap();
        assert_eq!(&ok.data[..], b"%PDF-1.4");
        assert!(matches!(
            load_file(&reply, &att("missing.pdf"), 1000).await,
            Err(Refusal::MissingFile { .. })
        ));
        assert!(matches!(
            load_file(&reply, &att("real.pdf"), 3).await,
            Err(Refusal::FileTooLarge { .. })
        ));
    }
}
