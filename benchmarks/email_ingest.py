"""Email ingest benchmark: Switchboard's IMAP ingest (fetched, parsed, threaded, routed, stored durably) against a
raw imapclient fetch of the same Dovecot mailbox, in the same run; then a SIGKILL mid-ingest and a restart, which
must lose and duplicate nothing.

    .venv/bin/python benchmarks/email_ingest.py [--messages 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.mailservers import PASSWORD, Dovecot, dovecot_available, free_port  # noqa: E402

TARGET_RATIO = 0.5
BATCH = 200
TEXTS = {
    "en": ["My payout did not arrive this week, can you check?", "The tasker never showed up for my cleaning job.",
           "I was charged twice for the same order, please refund one of them.", "The app crashes when I open chat."],
    "it": ["Il pagamento non è arrivato, potete controllare?", "Il corriere non si è presentato all'indirizzo.",
           "Vorrei un rimborso per l'attività annullata ieri sera.", "Non riesco ad accedere al mio account."],
    "ru": ["Деньги за заказ так и не пришли, проверьте, пожалуйста.", "Исполнитель не пришёл в назначенное время.",
           "С меня списали деньги дважды, верните одну оплату.", "Приложение закрывается при входе."],
    "uz": ["To'lov hali kelmadi, iltimos tekshirib bering.", "Kuryer manzilga kelmadi, buyurtma qayerda?",
           "Pulim ikki marta yechildi, birini qaytaring.", "Ilova ochilganda yopilib qolmoqda."],
}


def realistic_mailbox(n: int, seed: int = 7) -> list[bytes]:
    """`n` mails like a support mailbox gets: plain and HTML, attachments, replies in threads, four languages."""
    rng = random.Random(seed)
    start = datetime(2026, 11, 23, 8, 0, tzinfo=timezone.utc)
    sent: list[tuple[str, str, str]] = []  # (sender, message id, subject) to reply to
    out = []
    for i in range(n):
        language = rng.choice(list(TEXTS))
        text = rng.choice(TEXTS[language])
        sender = f"customer{rng.randrange(n // 3 + 1)}@example.{'ru' if language == 'ru' else 'com'}"
        mail = EmailMessage()
        mail["Date"] = format_datetime(start + timedelta(seconds=7 * i))
        mail["To"] = "support@taskly.example"
        mail["Message-ID"] = make_msgid(f"b{i}", "example.com")
        kind = rng.random()
        subject = f"Order {1000 + i}: {text[:30]}"
        if kind < 0.2 and sent:
            sender, parent, subject = rng.choice(sent)
            mail["In-Reply-To"] = parent
            mail["References"] = parent
            subject = f"Re: {subject}"
            text = f"{rng.choice(TEXTS[language])}\n\nOn Mon, Support wrote:\n> {text}\n> Thanks"
        mail["From"] = f"{'Иван' if language == 'ru' else 'Ada'} {i} <{sender}>"
        mail["Subject"] = subject
        mail.set_content(text + "\n\n-- \nSent from my phone")
        if 0.2 <= kind < 0.45:
            mail.add_alternative(f"<html><body><p>{text}</p><p><i>Sent from my phone</i></p></body></html>",
                                 subtype="html")
        elif 0.45 <= kind < 0.55:
            mail.add_attachment(rng.randbytes(rng.randrange(5_000, 60_000)), maintype="image", subtype="jpeg",
                                filename=f"foto_{i}_è.jpg")
        elif 0.55 <= kind < 0.6:
            mail.add_attachment(b"%PDF-1.4\n" + rng.randbytes(20_000), maintype="application", subtype="pdf",
                                filename=f"ricevuta-{i}.pdf")
        sent.append((sender, mail["Message-ID"], subject))
        out.append(mail.as_bytes())
    return out


def fill(dovecot: Dovecot, user: str, mails: list[bytes]) -> None:
    client = dovecot.client(user)
    try:
        for start in range(0, len(mails), 100):
            client.multiappend("INBOX", mails[start:start + 100])
    finally:
        client.logout()


def raw_fetch(dovecot: Dovecot, user: str) -> tuple[int, float]:
    """The physical limit: imapclient fetching every body of the mailbox in batches, nothing else."""
    client = dovecot.client(user)
    try:
        started = time.perf_counter()
        client.select_folder("INBOX", readonly=True)
        uids = client.search(["ALL"])
        n = 0
        for start in range(0, len(uids), BATCH):
            n += len(client.fetch(uids[start:start + BATCH], ["BODY.PEEK[]"]))
        return n, time.perf_counter() - started
    finally:
        client.logout()


def config_dir(folder: Path, dovecot: Dovecot, user: str, after: str, port: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "switchboard.yaml").write_text(f"""\
instance: {{name: Email Benchmark, case_ref_prefix: TK}}
server: {{host: 127.0.0.1, port: {port}}}
store: {{backend: sqlite}}
lines:
  poster: {{accounts: [{{channel: email, account: {user}}}]}}
plugins:
  email:
    token_secret: {{$env: BENCH_EMAIL_SECRET, default: bench-secret}}
    mailboxes:
      - name: support
        address: {user}
        imap: {{host: 127.0.0.1, port: {dovecot.port}, security: none, username: {user},
               password: {{$env: BENCH_IMAP_PASSWORD, default: {PASSWORD}}}}}
        after_ingest: {after}
        batch: {BATCH}
""")
    return folder


async def ours(config: Path, data: Path) -> tuple[dict[str, int], float]:
    """Switchboard's whole ingest of the mailbox, in process: one sync from the first UID to the last."""
    from plugins.email import MAILBOXES
    from router.app import Switchboard
    from router.config import load_config

    sb = Switchboard(load_config(config), data_dir=data)
    await sb.start(background=False)
    try:
        mailbox = sb.stash[MAILBOXES]["support"]
        await mailbox.connect()
        started = time.perf_counter()
        counts = await mailbox.sync()
        elapsed = time.perf_counter() - started
        await mailbox.session.close()
        return counts, elapsed
    finally:
        await sb.stop()


def stored(db: Path) -> tuple[int, int, int]:
    """(inbound mails, distinct external ids, quarantined) in a deployment's SQLite file."""
    if not db.exists():
        return 0, 0, 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        total, distinct = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT external_id) FROM messages WHERE channel = 'email' AND direction = 'in'"
        ).fetchone()
        quarantined = conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        return total, distinct, quarantined
    except sqlite3.OperationalError:
        return 0, 0, 0
    finally:
        conn.close()


def kill_and_restart(dovecot: Dovecot, user: str, n: int, work: Path) -> str:
    """`switchboard run` ingests the mailbox; SIGKILL it halfway, start it again; check nothing lost or doubled."""
    config = config_dir(work / "kill-config", dovecot, user, "seen", free_port())
    data = work / "kill-data"
    db = data / "switchboard.db"
    command = [str(Path(sys.executable).with_name("switchboard")), "run", "--config", str(config), "--data", str(data)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = open(work / "kill.log", "wb")
    first = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while stored(db)[0] < n // 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    at_kill = stored(db)[0]
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            total, distinct, quarantined = stored(db)
            if total + quarantined >= n:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # anything still arriving would be a duplicate: give it the chance to show
        total, distinct, quarantined = stored(db)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(30)
        except subprocess.TimeoutExpired:
            second.kill()
    client = dovecot.client(user)
    try:
        client.select_folder("INBOX", readonly=True)
        unseen = len(client.search(["UNSEEN"]))
    finally:
        client.logout()
    ok = total == distinct == n - quarantined and unseen == 0
    verdict = "ok" if ok else "FAILED"
    return (f"kill/restart: killed with {at_kill} of {n} stored; after restart {total} stored, {distinct} distinct, "
            f"{quarantined} quarantined, {unseen} left unseen on the server: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    missing = dovecot_available()
    if missing:
        print(f"email_ingest: {missing}", file=sys.stderr)
        return 2
    n = args.messages
    mails = realistic_mailbox(n)
    print(f"email_ingest: {n} mails, {sum(map(len, mails)) / n / 1024:.1f} KiB on average", flush=True)
    dovecot = Dovecot().start()
    try:
        with tempfile.TemporaryDirectory(prefix="sb-email-bench-") as tmp:
            work = Path(tmp)
            fill(dovecot, "bench@taskly.example", mails)
            fill(dovecot, "killed@taskly.example", mails)
            raw_fetch(dovecot, "bench@taskly.example")  # warm Dovecot's caches for both sides alike
            baseline_rates = []
            for _ in range(2):
                count, elapsed = raw_fetch(dovecot, "bench@taskly.example")
                baseline_rates.append(count / elapsed)
            baseline = max(baseline_rates)
            print(f"baseline: raw imapclient FETCH BODY.PEEK[] in batches of {BATCH}: {baseline:,.0f} msg/s", flush=True)
            config = config_dir(work / "config", dovecot, "bench@taskly.example", "leave", free_port())
            counts, elapsed = asyncio.run(ours(config, work / "data"))
            total = sum(counts.values())
            rate = total / elapsed
            print(f"ours: {total} mails stored, threaded and routed in {elapsed:.2f} s: {rate:,.0f} msg/s {counts}",
                  flush=True)
            print(kill_and_restart(dovecot, "killed@taskly.example", n, work), flush=True)
            ratio = rate / baseline
            print(f"target: ratio >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'NOT met'}")
            print(f"RESULT email_ingest ours={rate:.0f} baseline={baseline:.0f} ratio={ratio:.3f} msg/s")
    finally:
        dovecot.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
