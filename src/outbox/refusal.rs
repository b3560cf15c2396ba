//! Why a reply went to `outbox/failed/`, in French and in English: what is wrong and what to
//! do. `error.txt` is read by the people who run the legacy software, so every message names
//! the file or field at fault and says how to send the reply again.

use std::fmt;

/// Largest file a reply may carry when the démarche's limit is unknown.
pub const MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// Largest `reply.json`.
pub const MAX_REPLY_JSON_BYTES: u64 = 1024 * 1024;

/// What is wrong with a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An entry of `outbox/new/` that is not a folder.
    NotAFolder,
    NameNotUtf8,
    NoReplyJson,
    ReplyJsonNotAFile,
    ReplyJsonTooLarge {
        size: u64,
    },
    ReplyJsonUnreadable {
        error: String,
    },
    ReplyJsonInvalid {
        error: String,
    },
    NoCase,
    CaseMismatch {
        case_id: String,
        external_id: String,
    },
    UnknownCase {
        id: String,
    },
    OtherSubscription {
        id: String,
        owner: String,
    },
    UnknownStatus {
        status: String,
    },
    NothingToSend,
    TooLong {
        field: &'static str,
        max: usize,
        len: usize,
    },
    BadFileName {
        file: String,
        why_fr: &'static str,
        why_en: &'static str,
    },
    DuplicateFile {
        file: String,
    },
    MissingFile {
        file: String,
    },
    NotARegularFile {
        file: String,
    },
    LinkOutside {
        file: String,
    },
    FileUnreadable {
        file: String,
        error: String,
    },
    EmptyFile {
        file: String,
    },
    FileTooLarge {
        file: String,
        size: u64,
        limit: u64,
    },
    MissingField {
        file: String,
        field: &'static str,
    },
    BadMimeType {
        file: String,
        mime: String,
    },
    FileChanged {
        file: String,
    },
    ImpossibleStatus {
        from: String,
        to: String,
    },
    UnknownCaseStatus {
        status: String,
    },
    CaseNotOnHub {
        error: String,
    },
    HubRefused {
        doing_fr: &'static str,
        doing_en: &'static str,
        error: String,
    },
    FileNotAccepted {
        file: String,
        status: String,
    },
    /// HubEE's cap on events per case (PROTOCOL §10.17): final, for this case.
    EventCap {
        error: String,
    },
    GaveUp {
        since: String,
        error: String,
    },
    /// The folder left `outbox/new/`, or its `reply.json` changed, before it was sent.
    Withdrawn,
}

const RESEND_FR: &str = "corrigez la réponse puis remettez son dossier dans outbox/new/ \
    (écrit dans outbox/tmp/ puis renommé, ou `mv outbox/failed/NOM outbox/new/`)";
const RESEND_EN: &str = "fix the reply, then put its folder back into outbox/new/ \
    (written in outbox/tmp/ then renamed, or `mv outbox/failed/NAME outbox/new/`)";

impl Refusal {
    /// (French, English): what is wrong.
    pub fn what(&self) -> (String, String) {
        use Refusal::*;
        match self {
            NotAFolder => (
                "cette entrée de outbox/new/ est un fichier, pas un dossier de réponse".into(),
                "this entry of outbox/new/ is a file, not a reply folder".into(),
            ),
            NameNotUtf8 => (
                "le nom du dossier n'est pas en UTF-8".into(),
                "the folder's name is not UTF-8".into(),
            ),
            NoReplyJson => (
                "le dossier ne contient pas de reply.json".into(),
                "the folder holds no reply.json".into(),
            ),
            ReplyJsonNotAFile => (
                "reply.json n'est pas un fichier ordinaire (lien symbolique ou dossier)".into(),
                "reply.json is not a regular file (a symbolic link or a directory)".into(),
            ),
            ReplyJsonTooLarge { size } => (
                format!("reply.json fait {size} octets, plus que la limite de {MAX_REPLY_JSON_BYTES}"),
                format!("reply.json has {size} bytes, more than the limit of {MAX_REPLY_JSON_BYTES}"),
            ),
            ReplyJsonUnreadable { error } => (
                format!("reply.json ne peut pas être lu : {error}"),
                format!("reply.json cannot be read: {error}"),
            ),
            ReplyJsonInvalid { error } => (
                format!("reply.json n'est pas une réponse valide : {error}"),
                format!("reply.json is not a valid reply: {error}"),
            ),
            NoCase => (
                "reply.json ne dit pas à quel dossier répondre (ni \"case_id\" ni \"external_id\")".into(),
                "reply.json does not say which case it answers (no \"case_id\" nor \"external_id\")".into(),
            ),
            CaseMismatch { case_id, external_id } => (
                format!("\"case_id\" {case_id:?} et \"external_id\" {external_id:?} désignent des dossiers différents"),
                format!("\"case_id\" {case_id:?} and \"external_id\" {external_id:?} name different cases"),
            ),
            UnknownCase { id } => (
                format!("le dossier {id:?} n'a pas été reçu par cet abonnement"),
                format!("case {id:?} was not received by this subscription"),
            ),
            OtherSubscription { id, owner } => (
                format!("le dossier {id:?} appartient à l'abonnement {owner:?}, pas à celui-ci"),
                format!("case {id:?} belongs to subscription {owner:?}, not to this one"),
            ),
            UnknownStatus { status } => (
                format!("le statut {status:?} ne peut pas être demandé (permis : DONE, REFUSED, IN_PROGRESS, ADD_AWAITING, SI_INTG_ERROR)"),
                format!("status {status:?} cannot be asked for (allowed: DONE, REFUSED, IN_PROGRESS, ADD_AWAITING, SI_INTG_ERROR)"),
            ),
            NothingToSend => (
                "la réponse ne contient ni statut, ni message, ni fichier : rien à envoyer".into(),
                "the reply has no status, no message and no file: nothing to send".into(),
            ),
            TooLong { field, max, len } => (
                format!("\"{field}\" fait {len} caractères, plus que les {max} permis"),
                format!("\"{field}\" has {len} characters, more than the {max} allowed"),
            ),
            BadFileName { file, why_fr, why_en } => (
                format!("le nom de fichier {file:?} est refusé : {why_fr}"),
                format!("file name {file:?} is refused: {why_en}"),
            ),
            DuplicateFile { file } => (
                format!("le fichier {file:?} est nommé deux fois dans \"attachments\""),
                format!("file {file:?} is listed twice in \"attachments\""),
            ),
            MissingFile { file } => (
                format!("le fichier {file:?} nommé dans reply.json est absent du dossier"),
                format!("file {file:?} named in reply.json is not in the folder"),
            ),
            NotARegularFile { file } => (
                format!("{file:?} n'est pas un fichier ordinaire"),
                format!("{file:?} is not a regular file"),
            ),
            LinkOutside { file } => (
                format!("{file:?} est un lien symbolique vers l'extérieur du dossier de la réponse"),
                format!("{file:?} is a symbolic link to outside the reply's folder"),
            ),
            FileUnreadable { file, error } => (
                format!("le fichier {file:?} ne peut pas être lu : {error}"),
                format!("file {file:?} cannot be read: {error}"),
            ),
            EmptyFile { file } => (
                format!("le fichier {file:?} est vide"),
                format!("file {file:?} is empty"),
            ),
            FileTooLarge { file, size, limit } => (
                format!("le fichier {file:?} fait {size} octets, plus que la limite de {limit}"),
                format!("file {file:?} has {size} bytes, more than the limit of {limit}"),
            ),
            MissingField { file, field } => (
                format!("la pièce {file:?} n'a pas de \"{field}\""),
                format!("attachment {file:?} has no \"{field}\""),
            ),
            BadMimeType { file, mime } => (
                format!("le type MIME {mime:?} de {file:?} n'est pas de la forme type/sous-type"),
                format!("MIME type {mime:?} of {file:?} is not of the form type/subtype"),
            ),
            FileChanged { file } => (
                format!("le fichier {file:?} a changé pendant l'envoi"),
                format!("file {file:?} changed while it was being sent"),
            ),
            ImpossibleStatus { from, to } => (
                format!("le dossier est au statut {from} ; il ne peut pas passer à {to}"),
                format!("the case is at status {from}; it cannot move to {to}"),
            ),
            UnknownCaseStatus { status } => (
                format!("le hub donne au dossier un statut inconnu ({status:?})"),
                format!("the hub gives the case an unknown status ({status:?})"),
            ),
            CaseNotOnHub { error } => (
                format!("le hub ne donne pas accès à ce dossier : {error}"),
                format!("the hub does not give access to this case: {error}"),
            ),
            HubRefused { doing_fr, doing_en, error } => (
                format!("le hub a refusé {doing_fr} : {error}"),
                format!("the hub refused {doing_en}: {error}"),
            ),
            FileNotAccepted { file, status } => (
                format!("le hub n'a pas accepté le fichier {file:?} (statut {status})"),
                format!("the hub did not accept file {file:?} (status {status})"),
            ),
            EventCap { error } => (
                format!("le dossier a atteint la limite d'événements de HubEE : le hub refuse désormais tout nouvel événement sur ce dossier ({error})"),
                format!("the case has reached HubEE's limit of events: the hub now refuses any further event on it ({error})"),
            ),
            GaveUp { since, error } => (
                format!("le hub n'a pas pu être joint depuis {since} ; dernière erreur : {error}"),
                format!("the hub could not be reached since {since}; last error: {error}"),
            ),
            Withdrawn => (
                "le dossier a quitté outbox/new/, ou son reply.json a changé, avant que la réponse soit envoyée".into(),
                "the folder left outbox/new/, or its reply.json changed, before the reply was sent".into(),
            ),
        }
    }

    /// (French, English): what to do.
    pub fn fix(&self) -> (String, String) {
        use Refusal::*;
        let (fr, en): (String, String) = match self {
            NotAFolder => (
                "une réponse est un dossier contenant reply.json et ses fichiers ; écrivez-la dans outbox/tmp/NOM/ puis renommez-la en outbox/new/NOM".into(),
                "a reply is a folder holding reply.json and its files; write it in outbox/tmp/NAME/ then rename it to outbox/new/NAME".into(),
            ),
            NameNotUtf8 => (
                "renommez le dossier avec des lettres, chiffres, « . », « _ » ou « - »".into(),
                "rename the folder with letters, digits, '.', '_' or '-'".into(),
            ),
            NoReplyJson | ReplyJsonNotAFile | ReplyJsonUnreadable { .. } => (
                format!("écrivez reply.json (un fichier ordinaire, lisible par le groupe du spool) dans le dossier ; {RESEND_FR}"),
                format!("write reply.json (a regular file the spool group can read) in the folder; {RESEND_EN}"),
            ),
            ReplyJsonTooLarge { .. } | ReplyJsonInvalid { .. } => (
                format!("écrivez un objet JSON avec \"case_id\" ou \"external_id\", et au choix \"status\", \"message\", \"comment\", \"attachments\" (voir le README, « Replies: the outbox ») ; {RESEND_FR}"),
                format!("write one JSON object with \"case_id\" or \"external_id\", and any of \"status\", \"message\", \"comment\", \"attachments\" (see the README, \"Replies: the outbox\"); {RESEND_EN}"),
            ),
            NoCase | CaseMismatch { .. } | UnknownCase { .. } => (
                format!("indiquez le \"case_id\" ou l'\"external_id\" lu dans le manifest.json de l'entrée reçue ; {RESEND_FR}"),
                format!("give the \"case_id\" or \"external_id\" read from the received entry's manifest.json; {RESEND_EN}"),
            ),
            OtherSubscription { owner, .. } => (
                format!("déposez la réponse dans le outbox/ du spool de l'abonnement {owner:?}"),
                format!("put the reply in the outbox/ of subscription {owner:?}'s spool"),
            ),
            UnknownStatus { .. } => (
                format!("donnez l'un des statuts permis, ou aucun ; {RESEND_FR}"),
                format!("give one of the allowed statuses, or none; {RESEND_EN}"),
            ),
            NothingToSend => (
                format!("ajoutez un \"status\", un \"message\" ou des \"attachments\" ; {RESEND_FR}"),
                format!("add a \"status\", a \"message\" or \"attachments\"; {RESEND_EN}"),
            ),
            TooLong { .. } => (
                format!("raccourcissez le texte ; {RESEND_FR}"),
                format!("shorten the text; {RESEND_EN}"),
            ),
            BadFileName { .. } | DuplicateFile { .. } => (
                format!("nommez dans \"file\" un fichier posé dans le dossier même de la réponse, sans chemin (ni « / », ni « .. ») ; {RESEND_FR}"),
                format!("name in \"file\" a file placed in the reply's own folder, without a path (no '/', no '..'); {RESEND_EN}"),
            ),
            MissingFile { .. } | NotARegularFile { .. } | LinkOutside { .. } | FileUnreadable { .. } | EmptyFile { .. } => (
                format!("copiez le fichier (pas un lien) dans le dossier de la réponse, lisible par le groupe du spool ; {RESEND_FR}"),
                format!("copy the file (not a link) into the reply's folder, readable by the spool group; {RESEND_EN}"),
            ),
            FileTooLarge { .. } => (
                format!("envoyez un fichier plus petit (compressé ou découpé) ; {RESEND_FR}"),
                format!("send a smaller file (compressed or split); {RESEND_EN}"),
            ),
            MissingField { .. } | BadMimeType { .. } => (
                format!("donnez pour chaque pièce \"file\", \"type\" (le type métier de la démarche, p. ex. \"DD_Certificatdedeces\") et \"mime_type\" (p. ex. \"application/pdf\") ; {RESEND_FR}"),
                format!("give each attachment \"file\", \"type\" (the démarche's business type, e.g. \"DD_Certificatdedeces\") and \"mime_type\" (e.g. \"application/pdf\"); {RESEND_EN}"),
            ),
            FileChanged { .. } => (
                format!("ne modifiez plus une réponse une fois déposée dans outbox/new/ ; {RESEND_FR}"),
                format!("do not change a reply once it is in outbox/new/; {RESEND_EN}"),
            ),
            ImpossibleStatus { .. } | UnknownCaseStatus { .. } => (
                "vérifiez le statut du dossier dans le portail HubEE ; si la réponse doit tout de même partir, renvoyez-la sans \"status\"".into(),
                "check the case's status in the HubEE portal; if the reply must still go, send it again without \"status\"".into(),
            ),
            CaseNotOnHub { .. } => (
                "vérifiez dans le portail HubEE que le dossier existe et relève bien de cet abonnement".into(),
                "check in the HubEE portal that the case exists and belongs to this subscription".into(),
            ),
            HubRefused { .. } | FileNotAccepted { .. } => (
                format!("vérifiez les formats, types et tailles de pièces permis par la démarche (portail HubEE) ; {RESEND_FR}"),
                format!("check the attachment formats, types and sizes the démarche allows (HubEE portal); {RESEND_EN}"),
            ),
            EventCap { .. } => (
                "répondez par le portail HubEE (Gestion des dossiers), ou écrivez au support HubEE (support@hubee.numerique.gouv.fr) en donnant le numéro du dossier ; renvoyer cette réponse ne servira à rien".into(),
                "reply through the HubEE portal, or write to HubEE support (support@hubee.numerique.gouv.fr) giving the case's number; sending this reply again will not help".into(),
            ),
            Withdrawn => (
                format!("ne déplacez ni ne modifiez une réponse déposée dans outbox/new/ ; {RESEND_FR}"),
                format!("do not move or change a reply once it is in outbox/new/; {RESEND_EN}"),
            ),
            GaveUp { .. } => (
                "quand le hub répond de nouveau (voir `hubee-sync status`), remettez le dossier dans outbox/new/ (`mv outbox/failed/NOM outbox/new/`)".into(),
                "once the hub answers again (see `hubee-sync status`), put the folder back into outbox/new/ (`mv outbox/failed/NAME outbox/new/`)".into(),
            ),
        };
        (fr, en)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, what) = self.what();
        let (_, fix) = self.fix();
        write!(f, "{what}; {fix}")
    }
}
