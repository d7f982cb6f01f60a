"""C2PA content credentials for PNG samples: a local test chain, signing, verification.

A signed PNG carries a C2PA manifest (c2pa-python, the Content Authenticity Initiative's SDK)
whose claim says the image is ``trainedAlgorithmicMedia`` created by genforge, with the
genforge provenance record as an ``org.genforge.provenance`` assertion, and whose hard binding
(``c2pa.hash.data``) covers every byte of the file outside the manifest: pixels and the
provenance chunk alike. Signing works offline: no timestamp authority is asked (``ta_url``
None), so the signature's time is the signer's claim, valid while the certificate is.

`genforge keys init` makes a *test* chain (C2PA 2.1, section 14.5: an end-entity certificate
that is not self-signed, not a CA, with digitalSignature key usage and an allowed extended key
usage: emailProtection and documentSigning here), ES256 keys on P-256, keys written 0600.
Verifiers trust it only when given its root with ``--trust-anchor``.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from genforge import GenforgeError

ROOT_CERT, ROOT_KEY = "root-ca.pem", "root-ca.key"
SIGNER_CERT, SIGNER_KEY = "signer.pem", "signer.key"
DOCUMENT_SIGNING = "1.3.6.1.5.5.7.3.36"  # id-kp-documentSigning (RFC 9336), allowed by C2PA
AI_SOURCE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "org.genforge.provenance"
VALID_DAYS = 365
EXTRA = "pip install 'genforge[responsible]'"


def require_c2pa():
    try:
        import c2pa
    except ImportError:
        raise GenforgeError(f"content credentials need c2pa-python; {EXTRA}") from None
    return c2pa


def _crypto():
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError:
        raise GenforgeError(f"signing keys need the cryptography package; {EXTRA}") from None
    return x509, hashes, serialization, ec


def default_dir() -> Path:
    """$GENFORGE_KEYS, else $XDG_CONFIG_HOME/genforge/credentials (~/.config/...)."""
    if os.environ.get("GENFORGE_KEYS"):
        return Path(os.environ["GENFORGE_KEYS"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "genforge" / "credentials"


def _write_private(path: Path, data: bytes) -> None:
    from genforge.atomic import atomic_write

    def write(f):
        os.fchmod(f.fileno(), stat.S_IRUSR | stat.S_IWUSR)  # 0600 before the first byte lands
        f.write(data)

    atomic_write(path, write)


def init_keys(folder: str | Path | None = None, force: bool = False) -> dict[str, Path]:
    """Make a local test chain in ``folder`` (default :func:`default_dir`): a root CA and a signing
    certificate it issued. Existing files are refused unless ``force``. Returns the four paths."""
    x509, hashes, serialization, ec = _crypto()
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from genforge.atomic import atomic_write_bytes

    folder = Path(folder) if folder is not None else default_dir()
    paths = {n: folder / n for n in (ROOT_CERT, ROOT_KEY, SIGNER_CERT, SIGNER_KEY)}
    taken = [p.name for p in paths.values() if p.exists()]
    if taken and not force:
        raise GenforgeError(f"{folder} already holds {', '.join(taken)}; pass --force to replace the "
                            "chain (files signed with the old one then verify only against the old root)")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.now(timezone.utc)

    def name(cn: str):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genforge local test chain")])

    def usage(sign: bool, ca: bool):
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)

    def builder(subject, issuer, public_key):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=VALID_DAYS))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    root_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = (builder(name("genforge test root CA"), name("genforge test root CA"), root_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(False, True), critical=True)
            .sign(root_key, hashes.SHA256()))
    leaf = (builder(name("genforge test signer"), root.subject, signer_key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(True, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION,
                                                  x509.ObjectIdentifier(DOCUMENT_SIGNING)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                           critical=False)
            .sign(root_key, hashes.SHA256()))

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    _write_private(paths[ROOT_KEY], pem_key(root_key))
    _write_private(paths[SIGNER_KEY], pem_key(signer_key))
    atomic_write_bytes(paths[ROOT_CERT], root.public_bytes(serialization.Encoding.PEM))
    # the chain a signer presents: its own certificate, then the issuer's
    atomic_write_bytes(paths[SIGNER_CERT], leaf.public_bytes(serialization.Encoding.PEM)
                       + root.public_bytes(serialization.Encoding.PEM))
    return paths


@dataclass(frozen=True)
class SigningKey:
    """A certificate chain (PEM, signer first) and its private key (PEM), with the C2PA
    algorithm the key implies. ``repr`` never shows the key."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    alg: str
    source: str


def _read(path: Path, what: str, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise GenforgeError(f"{flag} {path}: no such file; make a test chain with `genforge keys init` "
                            f"or name your {what}") from None
    except OSError as e:
        raise GenforgeError(f"{flag} {path}: cannot read the {what} ({e.strerror or e})") from None


def load_signing_key(cert: str | Path | None = None, key: str | Path | None = None) -> SigningKey:
    """The user's certificate and key (``cert``/``key``, else $GENFORGE_SIGN_CERT and
    $GENFORGE_SIGN_KEY), else the local test chain in :func:`default_dir`. Checks that the key
    parses, matches the certificate, and has an algorithm C2PA signs with."""
    x509, _, serialization, ec = _crypto()
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    cert = cert or os.environ.get("GENFORGE_SIGN_CERT")
    key = key or os.environ.get("GENFORGE_SIGN_KEY")
    if (cert is None) != (key is None):
        raise GenforgeError("give both --sign-cert and --sign-key (a certificate chain and its private key)")
    if cert is None:
        folder = default_dir()
        cert, key = folder / SIGNER_CERT, folder / SIGNER_KEY
        if not Path(cert).is_file():
            raise GenforgeError(f"no signing key in {folder}; run `genforge keys init` for a local test "
                                "chain, or pass --sign-cert CHAIN.pem --sign-key KEY.pem")
    cert_pem, key_pem = _read(Path(cert), "certificate chain", "--sign-cert"), _read(Path(key), "private key", "--sign-key")
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise GenforgeError(f"--sign-cert {cert}: not a PEM certificate chain") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise GenforgeError(f"--sign-key {key}: not an unencrypted PEM private key") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (private.public_key().public_bytes(serialization.Encoding.DER, pub)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise GenforgeError(f"--sign-key {key} is not the key of the first certificate in --sign-cert {cert}")
    if isinstance(private, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(private.curve.name)
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        alg = "ed25519"
    elif isinstance(private, rsa.RSAPrivateKey):
        alg = "ps256"
    else:
        alg = None
    if alg is None:
        raise GenforgeError(f"--sign-key {key}: C2PA signs with EC P-256/384/521, Ed25519 or RSA keys")
    return SigningKey(cert_pem, key_pem, alg, str(cert))


def _context(c2pa, settings: dict):
    return c2pa.Context(settings=c2pa.Settings.from_dict(settings))


def sign_png(data: bytes, record: dict, key: SigningKey, title: str) -> bytes:
    """``data`` (a complete PNG) with a C2PA manifest embedded and signed by ``key``."""
    c2pa = require_c2pa()
    from genforge import __version__

    manifest = {
        "claim_generator_info": [{"name": "genforge", "version": __version__}],
        "title": title,
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions",
             "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": AI_SOURCE,
                                   "softwareAgent": {"name": "genforge", "version": __version__}}]}},
            {"label": ASSERTION, "data": record},
        ],
    }
    out = io.BytesIO()
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(key.alg, key.cert_pem, key.key_pem, None))
        # no thumbnail: it would duplicate the grid and grow a small PNG ~10x
        with c2pa.Builder(manifest, context=_context(c2pa, {"builder": {"thumbnail": {"enabled": False}}})) as b:
            b.sign(signer, "image/png", io.BytesIO(data), out)
    except c2pa.C2paError as e:
        raise GenforgeError(f"C2PA signing with {key.source} failed: {str(e).splitlines()[0]}") from None
    return out.getvalue()


def load_anchors(path: str | Path) -> str:
    """A PEM file of trusted root certificates (--trust-anchor); checked to parse."""
    x509 = _crypto()[0]
    data = _read(Path(path), "trust anchor", "--trust-anchor")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise GenforgeError(f"--trust-anchor {path}: not a PEM certificate file") from None
    return data.decode("ascii", errors="replace")


# Failure codes of the C2PA validation report, in words (C2PA 2.1, section 15).
_WHAT = {
    "assertion.dataHash.mismatch": "the image bytes do not match the signed hash: the file changed after signing",
    "assertion.hashedURI.mismatch": "an assertion (such as the provenance record) changed after signing",
    "claimSignature.mismatch": "the claim signature does not verify: the manifest was altered",
    "signingCredential.untrusted": "the signer's certificate does not chain to a trusted anchor",
    "signingCredential.expired": "the signer's certificate had expired when it signed",
    "signingCredential.invalid": "the signer's certificate is not valid for C2PA signing",
}


@dataclass
class Credential:
    """A PNG's content credentials: ``status`` "trusted" (valid, signer chains to an anchor),
    "untrusted" (valid, signer not trusted), "tampered" (a check failed) or "unsigned"."""

    status: str
    signer: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)

    def message(self) -> str:
        if self.status == "unsigned":
            return "no content credentials (not signed)"
        if self.status == "trusted":
            return f"valid, signed by {self.signer} (trusted)"
        reasons = "; ".join(f"{_WHAT.get(code, explanation)} ({code})" for code, explanation in self.failures)
        if self.status == "untrusted":
            return f"valid signature by {self.signer}, but the signer is not trusted: {reasons}"
        return f"TAMPERED: {reasons}"


def verify_png(path: str | Path, anchors: str | None = None) -> Credential:
    """Check ``path``'s C2PA manifest offline; trust only ``anchors`` (PEM text) if given."""
    c2pa = require_c2pa()
    settings: dict = {"verify": {"verify_trust": True, "ocsp_fetch": False, "remote_manifest_fetch": False}}
    if anchors:
        settings["trust"] = {"trust_anchors": anchors}
    try:
        with open(path, "rb") as f, c2pa.Reader("image/png", f, context=_context(c2pa, settings)) as reader:
            state = reader.get_validation_state()
            results = (reader.get_validation_results() or {}).get("activeManifest") or {}
            info = (reader.get_active_manifest() or {}).get("signature_info") or {}
    except c2pa.C2paError as e:
        text = str(e)
        if "ManifestNotFound" in text or "no JUMBF" in text:
            return Credential("unsigned")
        return Credential("tampered", failures=[("manifest.unreadable", f"the C2PA manifest cannot be read "
                                                                        f"({text.splitlines()[0]})")])
    signer = " / ".join(str(info[k]) for k in ("common_name", "issuer") if info.get(k)) or "an unnamed signer"
    failures = [(f["code"], f.get("explanation", "")) for f in results.get("failure", [])]
    if state == "Trusted":
        return Credential("trusted", signer)
    if state == "Valid" and all(code.startswith("signingCredential.untrusted") for code, _ in failures):
        return Credential("untrusted", signer, failures or [("signingCredential.untrusted", "")])
    # name what failed; an untrusted signer is beside the point once the content does not verify
    failed = [f for f in failures if not f[0].startswith("signingCredential.untrusted")]
    return Credential("tampered", signer, failed or [("validation", f"validation state {state}")])


def credential_json(cred: Credential) -> dict:
    return {"status": cred.status, "signer": cred.signer, "message": cred.message(),
            "failures": [{"code": c, "explanation": e} for c, e in cred.failures]}

