"""The registry verbs of the `llmos` command line: import, pull, ls, show, rm, verify,
quantize (export-onnx lives in llmos/onnx/cli.py and takes names too). Each calls its twin in `llmos.registry` and only formats the result."""

from __future__ import annotations

import json
import sys

from llmos.cli.progress import bar, wanted
from llmos.errors import LlmosError


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _quant_text(entry) -> str:
    q = entry.quantization
    if not q:
        return entry.dtype or "-"
    return q.get("quant") or f"{q.get('method')}-{q.get('bits', '?')}bit"


def _import(args) -> int:
    from llmos.registry import operations as registry

    with bar("importing", "B", quiet=args.quiet, unit_scale=True) as progress:
        entry = registry.import_model(args.path, name=args.name, force=args.force, progress=progress)
    print(f"imported {args.path} as {entry.ref} ({len(entry.files)} files, {_size(entry.size)})")
    return 0


def _pull(args) -> int:
    from llmos.registry import operations as registry

    target = ":".join(registry.pull_target(args.repo, name=args.name))
    try:
        old = registry.show(target)
        before = (old.created, old.digest)
    except LlmosError:
        before = None
    try:
        entry = registry.pull(args.repo, name=args.name, progress=wanted(args.quiet))
    except KeyboardInterrupt:
        print(f"\nllmos: pull interrupted; run `llmos pull {args.repo}` again to resume", file=sys.stderr)
        raise
    src = entry.source
    commit = (src.get("commit") or "")[:12]
    if before == (entry.created, entry.digest):
        print(f"{entry.ref} is up to date ({src.get('repo_id')}@{commit})")
    else:
        print(f"pulled {src.get('repo_id')}@{commit} as {entry.ref} ({len(entry.files)} files, {_size(entry.size)})")
    return 0


def _ls(args) -> int:
    from llmos.registry import operations as registry

    entries = registry.list_models()
    if args.json:
        print(json.dumps([{"ref": e.ref, "path": e.path, **e.manifest} for e in entries], indent=2,
                         ensure_ascii=False))
        return 0
    if not entries:
        print(f"no models in {registry.home()} (add one with `llmos pull ORG/NAME` or `llmos import DIR`)")
        return 0
    rows = [("NAME", "ID", "FAMILY", "FORMAT", "WEIGHTS", "SIZE", "CREATED")]
    for e in entries:
        if "problem" in e.manifest:
            rows.append((e.ref, "-", "-", "-", "-", "-", "broken manifest: run `llmos verify`"))
            continue
        rows.append((e.ref, (e.digest or "-")[:12], e.family or "-", e.format or "-", _quant_text(e),
                     _size(e.size), (e.created or "-").replace("T", " ").rstrip("Z")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _show(args) -> int:
    from llmos.registry import operations as registry

    if args.template:
        template = registry.chat_template(args.model)
        sys.stdout.write(template if template.endswith("\n") else template + "\n")
        return 0
    if args.tokens is not None:
        pieces = registry.tokenize(args.model, args.tokens)
        if args.json:
            print(json.dumps([{"id": i, "token": t, "text": s} for i, t, s in pieces], ensure_ascii=False))
            return 0
        for n, (i, token, text) in enumerate(pieces):
            print(f"{n:>4}  {i:>7}  {token!r:<20} {text!r}")
        print(f"{len(pieces)} tokens")
        return 0
    entry = registry.show(args.model)
    if args.json:
        print(json.dumps({"ref": entry.ref, "path": entry.path, **entry.manifest}, indent=2, ensure_ascii=False))
        return 0
    m = entry.manifest
    lines = [("model", entry.ref), ("path", entry.path)]
    if entry.digest:
        lines.append(("id", entry.digest))
    src = entry.source
    if src.get("kind") == "hub":
        lines.append(("source", f"{src.get('endpoint')}/{src.get('repo_id')} @ {src.get('commit')}"))
    elif src.get("kind") == "import":
        lines.append(("source", f"imported from {src.get('path')}"))
    elif src.get("kind"):
        lines.append(("source", f"{src.get('kind')} of {src.get('from')}"))
    lines += [("family", f"{entry.family or '-'} ({', '.join(m.get('architectures') or []) or '-'})"),
              ("format", entry.format or "-"), ("dtype", entry.dtype or "-")]
    if entry.quantization:
        lines.append(("quantization", ", ".join(f"{k}={v}" for k, v in entry.quantization.items())))
    if m.get("parameters"):
        lines.append(("parameters", f"{m['parameters']:,}"))
    lines.append(("size", f"{_size(entry.size)} in {len(entry.files)} files"))
    eos = ", ".join(f"{t!r} ({i})" for t, i in zip(m.get("eos_tokens") or [], entry.eos_token_ids))
    lines.append(("eos tokens", eos or "-"))
    if entry.chat_template:
        lines.append(("chat template", f"{len(entry.chat_template)} characters from "
                                       f"{m.get('chat_template_origin') or '?'} (`llmos show {args.model} --template`)"))
    else:
        lines.append(("chat template", "none"))
    if entry.created:
        lines.append(("created", entry.created))
    for k, v in lines:
        print(f"{k + ':':<15}{v}")
    if entry.lineage:
        print("lineage:")
        for step in entry.lineage:
            extra = ", ".join(f"{k}={v}" for k, v in step.items() if k not in ("op", "from", "at") and v is not None)
            print(f"  {step.get('at', '')}  {step.get('op')} from {step.get('from')}" + (f" ({extra})" if extra else ""))
    if entry.files and not args.no_files:
        print("files:")
        for rel, f in sorted(entry.files.items()):
            print(f"  {(f.get('sha256') or '')[:16]:<16}  {_size(f.get('size', 0)):>9}  {rel}")
    return 0


def _rm(args) -> int:
    from llmos.registry import operations as registry

    entry = registry.remove(args.model)
    print(f"removed {entry.ref}")
    return 0


def _verify(args) -> int:
    from llmos.registry import operations as registry

    with bar("verifying", "file", quiet=args.quiet or args.json) as progress:
        report = registry.verify(args.model, progress=progress)
    if args.json:
        print(json.dumps({"ref": report.ref, "path": report.path, "ok": report.ok, "checked": report.checked,
                          "has_manifest": report.has_manifest, "problems": report.problems}, indent=2))
        return 0 if report.ok else 1
    for p in report.problems:
        print(f"{report.ref}: {p}")
    note = "" if report.has_manifest else " (no manifest: structure only, no checksums)"
    if report.ok:
        print(f"{report.ref}: ok, {report.checked} files verified{note}")
        return 0
    print(f"{report.ref}: {len(report.problems)} problem(s) in {report.checked} files{note}", file=sys.stderr)
    return 1


def _quantize(args) -> int:
    from llmos.registry import operations as registry

    with bar(f"quantizing to {args.to}", "step", quiet=args.quiet) as progress:
        entry = registry.quantize(args.model, to=args.to, group=args.group, name=args.name, adapter=args.adapter,
                                  force=args.force, progress=progress)
    print(f"wrote {entry.ref} ({_quant_text(entry)}, {_size(entry.size)}) from {args.model}")
    return 0



def add_registry_commands(subparsers) -> None:
    """Adds the registry verbs to the `llmos` parser's subparsers."""
    model_help = "registry name (name[:tag]) or model folder"

    p = subparsers.add_parser("import", help="copy a model folder, FILE.onnx or FILE.gguf into the registry")
    p.add_argument("path", metavar="DIR|FILE.onnx|FILE.gguf")
    p.add_argument("--name", help="name[:tag] for the entry (default: the folder's name)")
    p.add_argument("--force", action="store_true", help="replace an existing entry of that name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_import)

    p = subparsers.add_parser("pull", help="download a model from the Hugging Face Hub (HF_ENDPOINT honoured)")
    p.add_argument("repo", metavar="ORG/NAME[@REV]")
    p.add_argument("--name", help="name[:tag] for the entry (default: NAME, tagged with REV or 'latest')")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=_pull)

    p = subparsers.add_parser("ls", help="list the models in the registry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_ls)

    p = subparsers.add_parser("show", help="describe a model: source, family, files, chat template, tokens")
    p.add_argument("model", metavar="NAME", help=model_help)
    p.add_argument("--template", action="store_true", help="print the chat template")
    p.add_argument("--tokens", metavar="TEXT", help="show how the model's tokenizer splits TEXT")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.add_argument("--no-files", action="store_true", help="leave out the file list")
    p.set_defaults(run=_show)

    p = subparsers.add_parser("rm", help="delete a model from the registry")
    p.add_argument("model", metavar="NAME", help="registry name (name[:tag]); paths are refused")
    p.set_defaults(run=_rm)

    p = subparsers.add_parser("verify", help="check a model's files against their checksums")
    p.add_argument("model", metavar="NAME", help=model_help)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_verify)

    p = subparsers.add_parser("quantize", help="write a quantized copy of a model as a new entry")
    p.add_argument("model", metavar="NAME", help=model_help)
    p.add_argument("--to", required=True, choices=["int8", "int4"])
    p.add_argument("--group", type=int, default=32, choices=[32, 64, 128], help="block size (default 32)")
    p.add_argument("--name", help="name[:tag] for the new entry (default: NAME tagged with the format; "
                                  "with an adapter, the adapter folder's name)")
    p.add_argument("--adapter", metavar="PATH", default=None,
                   help="a LoRA adapter folder merged in before quantizing (an adapter folder also works as NAME)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace an existing entry of that name")
    p.set_defaults(run=_quantize)

