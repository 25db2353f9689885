"""Routing benchmark: classify + route (200 rules) + select + choose an agent among 100, 1,000 and 10,000 agents,
beside the physical-limit baseline (one regex search over the text, one pop from a presorted queue)."""
from __future__ import annotations

import argparse
import gc
import heapq
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from router.config import Config, load_config
from router.core.assignment import switchboard_choose_agent
from router.core.model import Case, CaseStatus, Customer, Identity, InboundMessage, PlatformContext
from router.core.requirements import agent_skills, requirement_for
from router.core.routing import RoutingEngine
from router.core.workforce import AWAY, OFFLINE, ONLINE, AgentState, Workforce
from _cpu import machine_busy_s  # noqa: E402 - the benchmarks folder, run as scripts

HERE = Path(__file__).resolve().parent
EXAMPLE_CONFIG = HERE.parent / "config"
RULES = 200
AGENT_COUNTS = (100, 1_000, 10_000)
TARGET_P99_US = 1000.0  # p99 of one decision at 10,000 agents
TARGET_SCALING = 1.5  # mean decision cost at 10,000 agents / at 100 agents
# A Wednesday evening: Milan (office-eu) and London open, Tashkent closed. One simulated second per decision, so
# London closes (18:00 UTC) after 4,500 decisions and Milan (19:00 UTC) after 8,100: business-hours rules flip
# during the run and routes change, as they do every evening.
START = datetime(2026, 3, 11, 16, 45, tzinfo=timezone.utc)
STEP = timedelta(seconds=1)
CHURN_EVERY = 25  # decisions between two presence changes (one agent leaves, another comes back)
SCHEDULE_EVERY = 100  # decisions between two schedule changes (one agent's shift ends, another's starts)
NOISY_OTHERS = 0.1  # cores used by other processes past which a measurement is flagged as noisy
LANGUAGES = ("en", "it", "ru", "uz")
CHANNELS = {  # channel: (share of messages, accounts with their shares)
    "email": (30, {"support@taskly.example": 85, "enterprise@taskly.example": 5, "partners": 10}),
    "chat": (20, {"web": 100}),
    "api": (15, {"marketplace": 80, "enterprise": 20}),
    "whatsapp": (10, {"+390212345678": 70, "+998712000000": 30}),
    "telegram": (10, {"@taskly_bot": 100}),
    "inapp": (7, {"ios": 50, "android": 50}),
    "sms": (5, {"+393330000000": 100}),
    "voice": (3, {"+390200000000": 100}),
}
ROLES = {"poster": 45, "tasker": 25, "courier": 15, "partner": 5, None: 10}
PARTNER_ACCOUNTS = [f"brand{n:02d}@partners.taskly.example" for n in range(40)]

# -- what customers write ------------------------------------------------------------------------------------------
# One to three of these make a message; most mention no topic or a common one, so they fall through the
# specific rules to the example's general ones or the default route.
TEXTS: dict[str, list[str]] = {
    "en": [
        "Hi, I posted a task yesterday and nobody has accepted it yet. Can you check?",
        "The tasker did not show up at 10am as agreed, what now?",
        "I was charged twice for the same task, please refund the second payment.",
        "Hello, how do I change the address on my profile?",
        "My app crashes every time I open the map.",
        "Can I get an invoice for last month's tasks for my company?",
        "The package arrived damaged and one item is missing.",
        "I can't log in, the verification code never arrives.",
        "Thank you for the quick help last time!",
        "When will my payout arrive? It has been a week.",
        "I'd like to reschedule the cleaning to Friday afternoon.",
        "Is there a way to leave a tip after the job is done?",
        "Please cancel my booking for tomorrow morning.",
        "I left a one star review by mistake, can I change it?",
        "The courier was rude and this is not what we agreed.",
        "Where can I see the status of my order 48213377?",
        "I would like to know more about how the platform works.",
        "My bike got a flat tyre during the shift, I am late for the next drop.",
    ],
    "it": [
        "Buongiorno, ho pubblicato un lavoro ieri ma nessuno l'ha ancora accettato.",
        "Il tasker non si è presentato all'appuntamento di stamattina.",
        "Mi avete addebitato due volte lo stesso importo, vorrei un rimborso.",
        "Come posso cambiare l'indirizzo nel mio profilo?",
        "L'app si blocca ogni volta che apro la mappa.",
        "Mi serve la fattura del mese scorso per la mia azienda.",
        "Il pacco è arrivato danneggiato e manca un articolo.",
        "Non riesco a fare l'accesso, il codice di verifica non arriva.",
        "Grazie mille per l'aiuto dell'altra volta!",
        "Quando arriva il mio pagamento? È passata una settimana.",
        "Vorrei spostare la pulizia a venerdì pomeriggio.",
        "Posso lasciare una mancia dopo il lavoro?",
        "Per favore annullate la mia prenotazione di domani.",
        "Ho lasciato una recensione negativa per errore, posso cambiarla?",
        "Il fattorino è stato scortese, secondo me è una truffa.",
        "Dove vedo lo stato del mio ordine 48213377?",
        "Vorrei sapere come funziona la piattaforma.",
        "Ho forato la bici durante il turno e sono in ritardo.",
    ],
    "ru": [
        "Здравствуйте, я вчера разместил задание, но его никто не принял.",
        "Исполнитель не пришёл в назначенное время.",
        "С меня дважды списали деньги, верните деньги пожалуйста.",
        "Как изменить адрес в профиле?",
        "Приложение зависает, когда я открываю карту.",
        "Нужен счёт за прошлый месяц для нашей компании.",
        "Посылка пришла повреждённой, одного товара нет.",
        "Не могу войти, код подтверждения не приходит.",
        "Спасибо за быструю помощь в прошлый раз!",
        "Когда придёт выплата? Прошла уже неделя.",
        "Хочу перенести уборку на пятницу.",
        "Можно оставить чаевые после работы?",
        "Отмените, пожалуйста, мой заказ на завтра.",
        "Я случайно поставил плохую оценку, можно изменить?",
        "Курьер нагрубил, по-моему это обман.",
        "Где посмотреть статус заказа 48213377?",
        "Хотел бы узнать, как работает платформа.",
        "У велосипеда спустило колесо во время смены, я опаздываю.",
    ],
    "uz": [
        "Assalomu alaykum, kecha topshiriq joyladim, lekin hech kim qabul qilmadi.",
        "Ijrochi kelmadi, endi nima qilay?",
        "Mendan ikki marta pul yechildi, pulimni qaytaring.",
        "Profilimdagi manzilni qanday o'zgartiraman?",
        "Ilova xaritani ochganda ishlamayapti.",
        "O'tgan oy uchun kompaniyamizga hisob-faktura kerak.",
        "Posilka singan holda keldi, bitta narsa yo'q.",
        "Tizimga kira olmayapman, tasdiqlash kodi kelmayapti.",
        "Yordamingiz uchun katta rahmat!",
        "To'lovim qachon keladi? Bir hafta o'tdi.",
        "Tozalashni jumaga ko'chirmoqchiman.",
        "Ishdan keyin choy puli qoldirsam bo'ladimi?",
        "Ertangi buyurtmamni bekor qiling, iltimos.",
        "Adashib yomon baho qo'ydim, o'zgartirsa bo'ladimi?",
        "Kuryer qo'pol muomala qildi, bu firibgarlik.",
        "48213377 buyurtmamning holatini qayerda ko'raman?",
        "Platforma qanday ishlashini bilmoqchiman.",
        "Smena paytida velosipedim g'ildiragi teshildi, kechikyapman.",
    ],
}
SAFETY_TEXTS = {
    "en": "There was an accident with the courier, he is injured and the police are here.",
    "it": "C'è stato un incidente, il corriere è ferito, abbiamo chiamato la polizia.",
    "ru": "Курьер попал в аварию, у него травма.",
    "uz": "Kuryer avariyaga tushdi, jarohat oldi.",
}
BOOKING_TEXTS = {  # words some keyword rules look for
    "en": "I booked furniture assembly for Saturday with my Plus membership.",
    "it": "Ho prenotato un montaggio mobili per sabato con l'abbonamento Plus.",
    "ru": "Заказал сборку мебели на субботу по подписке Plus.",
    "uz": "Shanba kuniga mebel yig'ish buyurtma qildim, Plus obunam bor.",
}
SUBJECTS = {"en": "Question about my task", "it": "Domanda sul mio lavoro", "ru": "Вопрос по заданию",
            "uz": "Topshiriq bo'yicha savol"}
NAMES = ["Anna Rossi", "Marco Bianchi", "John Smith", "Olga Ivanova", "Dilnoza Karimova", "Aziz Tursunov",
         "Emma Brown", "Giulia Verdi", "Ivan Petrov", "Sara Neri"]

# Topics added to the example's eight, each with keywords in the four languages.
EXTRA_TOPICS: dict[str, dict[str, list[str]]] = {
    "cancellation": {"en": ["cancel*"], "it": ["annull*", "disdett*"], "ru": ["отмен*"], "uz": ["bekor qil*"]},
    "reschedule": {"en": ["reschedule*", "postpone*"], "it": ["spostare", "rimandare", "rinvi*"],
                   "ru": ["перенес*", "перенест*"], "uz": ["ko'chir*", "boshqa kunga"]},
    "tips": {"en": ["tip", "tips", "tipping"], "it": ["mancia", "mance"], "ru": ["чаев*"], "uz": ["choy puli"]},
    "address": {"en": ["address", "my profile"], "it": ["indirizz*", "profilo"], "ru": ["адрес*", "профил*"],
                "uz": ["manzil*", "profil*"]},
    "promo": {"en": ["promo code", "coupon*", "discount*"], "it": ["coupon", "sconto", "codice promo*"],
              "ru": ["промокод*", "скидк*", "купон*"], "uz": ["promokod*", "chegirma*"]},
    "insurance": {"en": ["insurance", "insured", "claim"], "it": ["assicuraz*", "sinistro"], "ru": ["страхов*"],
                  "uz": ["sug'urta*"]},
    "verification": {"en": ["ID check", "background check", "document*"], "it": ["document*", "verifica dell'identità"],
                     "ru": ["документ*", "верификац*"], "uz": ["hujjat*", "shaxsni tasdiqlash"]},
    "vehicle": {"en": ["bike", "scooter", "vehicle", "flat tyre"], "it": ["bici*", "scooter", "veicol*", "forat*"],
                "ru": ["велосипед*", "самокат*", "колес*"], "uz": ["velosiped*", "skuter*", "g'ildirak*"]},
    "shift": {"en": ["shift*", "working hours"], "it": ["turn*", "orari*"], "ru": ["смен*", "график*"],
              "uz": ["smena*", "jadval*"]},
    "account_deletion": {"en": ["delete my account", "close my account", "gdpr"],
                         "it": ["cancellare il mio account", "eliminare l'account"],
                         "ru": ["удалить аккаунт", "удалите аккаунт"], "uz": ["akkauntni o'chir*"]},
    "order_status": {"en": ["status of my order", "where is my order"], "it": ["stato del mio ordine"],
                     "ru": ["статус заказа"], "uz": ["buyurtmamning holati*"]},
    "platform": {"en": ["how the platform works"], "it": ["come funziona"], "ru": ["как работает"],
                 "uz": ["qanday ishlash*"]},
}
EXTRA_TEAMS = {
    "partners": {"title": "Partner accounts", "tier": "L1", "lines": ["partner", "enterprise"]},
    "payouts": {"title": "Payouts to taskers and couriers", "tier": "L2"},
    "enterprise": {"title": "Enterprise customers", "tier": "L2", "lines": ["enterprise"]},
    "insurance": {"title": "Insurance claims", "tier": "L2"},
    "fleet": {"title": "Courier fleet and vehicles", "tier": "L1", "lines": ["courier"]},
    "verification": {"title": "Identity and background checks", "tier": "L1"},
    "promotions": {"title": "Promotions and coupons", "tier": "L1"},
    "retention": {"title": "Cancellations and retention", "tier": "L1"},
}
EXTRA_SKILLS = ["enterprise", "insurance", "fleet"]
# The lines an agent's desk serves (None: every line, the skill line:*), with weights.
DESKS = {None: 45, ("poster", "tasker"): 20, ("courier",): 12, ("partner", "enterprise"): 8, ("poster",): 5,
         ("tasker",): 5, ("poster", "tasker", "courier"): 5}
# Teams an agent of each tier is hired into (the first team of an agent), with weights.
TEAMS_BY_TIER = {
    "L1": {"general": 40, "technical": 10, "quality": 5, "account": 8, "onboarding": 5, "partners": 6, "fleet": 6,
           "verification": 6, "promotions": 4, "retention": 6},
    "L2": {"billing": 30, "disputes": 20, "safety": 15, "payouts": 15, "enterprise": 8, "insurance": 12},
    "L3": {"seniors": 100},
}


# -- configuration ---------------------------------------------------------------------------------------------------
def _pick(rng: random.Random, weights: dict[Any, int]) -> Any:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def generated_rules(rng: random.Random, count: int, topics: list[str], teams: list[str]) -> list[dict[str, Any]]:
    """`count` specific rules of six kinds, shuffled: most messages fall through nearly all of them."""
    lang = ["lang:{language}"]
    roles = ["poster", "tasker", "courier", "partner"]
    rules: list[dict[str, Any]] = []

    def add(name: str, when: dict[str, Any], **route: Any) -> None:
        route.setdefault("team", rng.choice(teams))
        route.setdefault("required_skills", lang)
        if rng.random() < 0.25:
            route["preferred_skills"] = ["lang:{language}>=4"]
        rules.append({"name": name, "when": when, "route": route})

    # A partner brand's own address (5 % of email is written to one of ten of these brands; the others are quiet).
    for n, account in enumerate(PARTNER_ACCOUNTS):
        add(f"partner-brand-{n:02d}", {"channel": "email", "account": account}, team="partners", line="partner",
            priority=2)
    # Words for one language (product names, places, campaigns), some only on one line.
    words = {
        "en": ["TaskPro", "Plus membership", "London", "Manchester", "gift card*", "same-day", "B2B", "warehouse",
               "fragile", "furniture assembly"],
        "it": ["TaskPro", "abbonamento Plus", "Milano", "Torino", "buono regalo", "in giornata", "magazzino",
               "fragile", "montaggio mobili", "trasloc*"],
        "ru": ["TaskPro", "подписк* Plus", "Москв*", "Казан*", "подарочн* карт*", "в тот же день", "склад*",
               "хрупк*", "сборк* мебели", "переезд*"],
        "uz": ["TaskPro", "Plus obuna*", "Toshkent", "Samarqand", "sovg'a karta*", "shu kuni", "ombor*",
               "mo'rt", "mebel yig'ish", "ko'chish*"],
    }
    keyword_rules = [(lng, w) for lng in LANGUAGES for w in words[lng]]
    for n, (language, word) in enumerate(rng.sample(keyword_rules, 40)):
        when: dict[str, Any] = {"language": language, "keywords": [word, f"{word.rstrip('*')} {n}"]}
        if n % 3 == 0:
            when["line"] = rng.choice(["poster", "tasker", "courier", "partner", "enterprise"])
        add(f"words-{language}-{n:02d}", when)
    # Reference numbers written in the text.
    patterns = [r"\bINV-\d{6}\b", r"\bCR-\d{5}\b", r"\bPO\s?\d{7}\b", r"\bTK-9\d{3}\b", r"\bclaim\s+#?\d{6}\b",
                r"\b[A-Z]{2}\d{9}[A-Z]{2}\b", r"\bIBAN\s+[A-Z]{2}\d{2}", r"\b9\d{7}\b", r"\bVAT\s?\d{11}\b",
                r"\bcoupon\s+[A-Z0-9]{8}\b"]
    for n in range(20):
        when = {"pattern": patterns[n % len(patterns)]}
        when["channel" if n < 10 else "role"] = (rng.sample(list(CHANNELS), 3) if n < 10 else rng.sample(roles, 2))
        add(f"reference-{n:02d}", when)
    # Outside business hours, per line and language.
    triples = [(ln, lng, r) for ln in ("poster", "tasker", "partner", "enterprise") for lng in LANGUAGES for r in roles]
    for n, (line, language, role) in enumerate(rng.sample(triples, 20)):
        add(f"after-hours-{n:02d}", {"line": line, "language": language, "role": role, "business_hours": "closed"},
            priority=4)
    # CEL expressions over the message's attributes and the customer: a few, as operators write them.
    expressions = [
        ("enterprise-plan", {"expr": "has(message.attributes.plan) && message.attributes.plan == 'enterprise'"},
         {"team": "enterprise", "required_skills": ["enterprise"]}),
        ("pro-plan-whatsapp", {"channel": "whatsapp",
                               "expr": "has(message.attributes.plan) && message.attributes.plan == 'pro'"}, {}),
        ("many-identities", {"expr": "customer.identities.size() > 3"}, {"team": "account"}),
        ("big-city-couriers", {"role": "courier", "expr": "message.attributes.city in ['Milano', 'Roma']"},
         {"team": "fleet"}),
        ("repeat-case", {"expr": "case.related_case && message.text.size() > 200"}, {"priority": 2}),
        ("ordered-tasks", {"role": "poster", "topic": "order_status", "expr": "message.order_id.startsWith('9')"}, {}),
        ("insured-damage", {"topic": "damaged_or_missing", "expr": "has(message.attributes.insured)"},
         {"team": "insurance", "required_skills": ["insurance"]}),
        ("partner-tier", {"role": "partner", "expr": "message.attributes.partner_tier == 'gold'"}, {}),
    ]
    for name, when, route in expressions:
        add(f"expr-{name}", when, **route)
    # The rest: one role, one language, one topic.
    combos = [(r, lng, t) for r in roles for lng in LANGUAGES for t in topics]
    for role, language, topic in rng.sample(combos, max(0, count - len(rules))):
        add(f"{role}-{language}-{topic}".replace("_", "-"), {"role": role, "language": language, "topic": topic})
    rng.shuffle(rules)
    return rules[:count]


def build_config(folder: Path, rng: random.Random) -> Config:
    """The example deployment (config/*.yaml) with more teams, topics and a line, and RULES rules: the example's
    safety lane first, then generated specific rules, then the example's general rules; loaded by load_config."""
    data: dict[str, Any] = {}
    for path in EXAMPLE_CONFIG.glob("*.yaml"):
        data.update(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    data.pop("agents", None)  # the workforce is generated, not configured
    data.pop("accounts", None)  # the example's logins name its agents: they go with them
    data["integrations"] = []
    data["calendars"]["office-london"] = {"timezone": "Europe/London", "hours": {"mon-fri": ["08:00-18:00"]}}
    data["lines"]["enterprise"] = {
        "title": "Enterprise customers", "calendar": "office-london", "languages": ["en", "it"],
        "sla_policy": "standard",
        "accounts": [{"channel": "email", "account": "enterprise@taskly.example"},
                     {"channel": "api", "account": "enterprise"}],
    }
    data["lines"]["partner"]["accounts"] = [{"channel": "email", "account": "partners"}]
    data["teams"].update(EXTRA_TEAMS)
    data["skills"] = [*data["skills"], *EXTRA_SKILLS]
    data["classification"]["topics"].update({name: {"keywords": kw} for name, kw in EXTRA_TOPICS.items()})
    example = data["routing"]["rules"]
    safety, general = example[:1], example[1:]
    topics = list(data["classification"]["topics"])
    extra = generated_rules(rng, RULES - len(example), topics, list(data["teams"]))
    data["routing"]["rules"] = [*safety, *extra, *general]
    for path_name, keys in (("switchboard.yaml", ("instance", "store", "integrations", "acknowledgements")),
                            ("lines.yaml", ("tiers", "calendars", "lines", "teams", "skills")),
                            ("routing.yaml", ("classification", "routing", "sla_policies", "escalation_policies",
                                              "offers"))):
        chunk = {k: data.pop(k) for k in keys if k in data}
        (folder / path_name).write_text(yaml.safe_dump(chunk, allow_unicode=True, sort_keys=False), encoding="utf-8")
    if data:
        (folder / "other.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return load_config(folder)


# -- messages ---------------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Sample:
    message: InboundMessage
    customer: Customer
    case: Case


def build_samples(rng: random.Random, count: int) -> list[Sample]:
    samples = []
    for i in range(count):
        language = rng.choices(LANGUAGES, weights=(40, 30, 18, 12))[0]
        channel = _pick(rng, {c: share for c, (share, _) in CHANNELS.items()})
        account = _pick(rng, CHANNELS[channel][1])
        if account == "partners" and rng.random() < 0.5:
            account = rng.choice(PARTNER_ACCOUNTS[:10])  # a few brands write often, most never in this sample
        role = _pick(rng, ROLES)
        parts = rng.sample(TEXTS[language], rng.choice((1, 1, 2, 2, 3)))
        if rng.random() < 0.03:
            parts.append(BOOKING_TEXTS[language])
        if rng.random() < 0.02:
            parts.append(SAFETY_TEXTS[language])
        if rng.random() < 0.05:
            parts.append(rng.choice(["INV-204311", "CR-55120", "PO 1234567", "claim #120044", "coupon SPRING26"]))
        text = " ".join(parts)
        attributes: dict[str, Any] = {"city": rng.choice(["Milano", "Roma", "Torino", "London", "Moskva", "Toshkent"])}
        if rng.random() < 0.13:
            attributes["plan"] = rng.choice(("enterprise", "pro", "pro", "pro"))
        if rng.random() < 0.02:
            attributes["vip"] = True
        if rng.random() < 0.05:
            attributes["insured"] = True
        if role == "partner" and rng.random() < 0.5:  # the others make the partner-tier expression fail (no key)
            attributes["partner_tier"] = rng.choice(("gold", "silver", "bronze"))
        sender = (Identity(kind="email", value=f"customer{i}@example.com") if channel == "email"
                  else Identity(kind="phone", value=f"+3933{i:08d}") if channel in ("sms", "whatsapp", "voice")
                  else Identity(kind=channel, value=f"user-{i}"))
        message = InboundMessage(
            channel=channel, account=account, external_id=f"bench-{i}", sender=sender,
            display_name=rng.choice(NAMES), subject=SUBJECTS[language] if channel == "email" else None, text=text,
            language=language if rng.random() < 0.5 else None,  # the other half is detected
            context=PlatformContext(role=role, order_id=f"{rng.randrange(10_000_000, 99_999_999)}"
                                    if rng.random() < 0.4 else None, attributes=attributes),
        )
        extra = rng.choices((0, 1, 2, 3), weights=(70, 20, 8, 2))[0]
        identities = [sender] + [Identity(kind="app", value=f"app-{i}-{n}") for n in range(extra)]
        customer = Customer(id=i + 1, role=role, display_name=message.display_name, language=language,
                            created_at=START - timedelta(days=rng.randrange(1, 900)), identities=identities)
        case = Case(id=i + 1, ref=f"TK-{1001 + i}", customer_id=customer.id, status=CaseStatus.NEW, channel=channel,
                    account=account, subject=message.subject, language=message.language, line=None, team=None,
                    tier=None, priority=3, created_at=START, updated_at=START,
                    related_case_id=rng.randrange(1, 1000) if rng.random() < 0.1 else None,
                    order_id=message.context.order_id)
        samples.append(Sample(message, customer, case))
    return samples


# -- agents -----------------------------------------------------------------------------------------------------------
def build_agents(rng: random.Random, count: int, config: Config) -> list[AgentState]:
    """A workforce hired into teams by tier, seated at desks that serve some lines, each agent with their own
    languages and levels (native 5, English 2-5, sometimes a third language) and a few free-form skills."""
    agents = []
    for n in range(count):
        tier = rng.choices(("L1", "L2", "L3"), weights=(60, 30, 10))[0]
        first = _pick(rng, TEAMS_BY_TIER[tier])
        teams = [first] + rng.sample([t for t in config.teams if t != first], rng.choices((0, 1, 2), (60, 30, 10))[0])
        desk = _pick(rng, DESKS)
        native = rng.choices(LANGUAGES, weights=(35, 30, 20, 15))[0]
        languages = {native: 5}
        if native != "en":
            languages["en"] = rng.choice((2, 3, 3, 4, 4, 5))
        if rng.random() < 0.25:
            languages.setdefault(rng.choice(LANGUAGES), rng.choice((2, 3, 4)))
        skills: dict[str, int] = {}
        if tier != "L1" and rng.random() < 0.15:
            skills["vip"] = rng.randint(3, 5)
        if tier == "L3" and rng.random() < 0.4:
            skills["legal"] = rng.randint(3, 5)
        if first in EXTRA_SKILLS:
            skills[first] = rng.randint(2, 5)
        chat = rng.choice((2, 3, 4))
        capacity = {"default": 3, "email": rng.choice((6, 8, 10)), "chat": chat, "whatsapp": chat, "telegram": chat,
                    "inapp": chat, "api": 3, "sms": 4, "voice": 1}
        presence = rng.choices((ONLINE, AWAY, OFFLINE), weights=(80, 10, 10))[0]
        agents.append(AgentState(
            id=f"agent-{n:05d}", name=f"Agent {n}",
            skills=agent_skills(lines=desk or (), teams=teams, tier=tier, languages=languages, skills=skills),
            capacity=capacity, presence=presence, in_schedule=rng.random() < 0.9,
        ))
    return agents


@dataclass
class Timings:
    total: list[int] = field(default_factory=list)  # ns per decision
    select: list[int] = field(default_factory=list)  # ns of its Workforce.select step
    cpu: list[int] = field(default_factory=list)  # ns of CPU time per decision (without waits for a core)
    phases: list[int] = field(default_factory=lambda: [0] * 5)  # classify, route, requirement, select, choose
    upkeep: int = 0  # ns spent on assignment effects, not part of a decision
    assigned: int = 0
    eligible_pools: int = 0
    first_seen: list[int] = field(default_factory=list)  # ns of decisions whose requirement the index had not cached

    def record(self, ns: int) -> None:
        self.total.append(ns)


@dataclass
class World:
    """One workforce size, its state carried across blocks so the index is in steady state."""

    count: int
    workforce: Workforce
    open: deque  # (agent id, channel) of assignments not yet released, oldest first
    target_open: int
    online: list[str]
    away: list[str]
    outside: list[str]
    in_schedule: list[str]
    rng: random.Random
    position: int = 0
    now: datetime = START
    timings: Timings = field(default_factory=Timings)


def build_world(rng: random.Random, count: int, config: Config) -> World:
    """The agents in a Workforce, already carrying load: about 1.5 open assignments per available agent,
    each released again in arrival order once the decisions have added as many new ones."""
    agents = build_agents(rng, count, config)
    workforce = Workforce()
    channels = list(CHANNELS)
    shares = [share for share, _ in CHANNELS.values()]
    open_items: list[tuple[str, str]] = []
    for agent in agents:
        if agent.presence == ONLINE and agent.in_schedule:
            for _ in range(rng.choice((0, 1, 1, 2, 2, 3))):
                channel = rng.choices(channels, weights=shares)[0]
                if agent.load.get(channel, 0) < agent.capacity_for(channel):
                    agent.load[channel] = agent.load.get(channel, 0) + 1
                    open_items.append((agent.id, channel))
            if agent.load:
                agent.last_assigned_at = START - timedelta(seconds=rng.randrange(1, 3600))
        workforce.upsert(agent)
    rng.shuffle(open_items)
    return World(
        count=count, workforce=workforce, open=deque(open_items), target_open=len(open_items),
        online=[a.id for a in agents if a.presence == ONLINE], away=[a.id for a in agents if a.presence == AWAY],
        outside=[a.id for a in agents if not a.in_schedule], in_schedule=[a.id for a in agents if a.in_schedule],
        rng=random.Random(rng.random()),
    )


def _swap(rng: random.Random, leaving: list[str], coming: list[str]) -> tuple[str, str]:
    i, j = rng.randrange(len(leaving)), rng.randrange(len(coming))
    a, b = leaving[i], coming[j]
    leaving[i], coming[j] = b, a
    return a, b


# -- the measured decision ------------------------------------------------------------------------------------------
class Chooser:
    """The built-in switchboard_choose_agent, or, if it raises on real candidates, the head of the selection (the
    workforce already sorts candidates by the same fairness order) with the error kept for the report."""

    def __init__(self) -> None:
        self.choose: Callable[[list[AgentState]], AgentState | None] = switchboard_choose_agent
        self.error: str | None = None

    def fallback(self, exc: Exception, candidates: list[AgentState]) -> AgentState | None:
        self.error = f"{type(exc).__name__}: {exc}"
        self.choose = _head
        return _head(candidates)


def _head(candidates: list[AgentState]) -> AgentState | None:
    return candidates[0] if candidates else None


def run_block(world: World, engine: RoutingEngine, samples: list[Sample], decisions: int, chooser: Chooser,
              limit: int, tiers: list[str], record: bool, into: Timings | None = None) -> None:
    """`decisions` decisions, each timed from classify to the chosen agent; then the assignment's effects on the
    workforce (load, last assignment, release of the oldest open assignment, presence and schedule churn)."""
    wf, rng, timings = world.workforce, world.rng, into or world.timings
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    phases = timings.phases
    for _ in range(decisions):
        sample = samples[world.position % len(samples)]
        world.position += 1
        world.now += STEP
        message, now = sample.message, world.now
        cached = _cached_requirements(wf)

        c0 = cpu_clock()
        t0 = clock()
        labels = engine.classify(message, sample.customer)
        t1 = clock()
        route = engine.route(message, sample.case, sample.customer, labels, now)
        t2 = clock()
        req = requirement_for(line=route.line, team=route.team, tier=route.tier, required_skills=route.required_skills,
                              preferred_skills=route.preferred_skills, tiers=tiers)
        t3 = clock()
        selection = wf.select(req, message.channel, limit=limit, ignore_capacity=route.safety_lane)
        t4 = clock()
        try:
            agent = chooser.choose(selection.candidates)
        except TypeError as exc:
            agent = chooser.fallback(exc, selection.candidates)
        t5 = clock()
        c1 = cpu_clock()

        if record:
            timings.record(t5 - t0)
            timings.cpu.append(c1 - c0)
            timings.select.append(t4 - t3)
            phases[0] += t1 - t0
            phases[1] += t2 - t1
            phases[2] += t3 - t2
            phases[3] += t4 - t3
            phases[4] += t5 - t4
            timings.eligible_pools += _eligible_pools(wf, req)
            if _cached_requirements(wf) > cached:
                timings.first_seen.append(t5 - t0)
        u0 = clock()
        if agent is not None:
            wf.assign(agent.id, message.channel, now)
            world.open.append((agent.id, message.channel))
            if record:
                timings.assigned += 1
        while len(world.open) > world.target_open:
            agent_id, channel = world.open.popleft()
            wf.add_load(agent_id, channel, -1)
        if world.position % CHURN_EVERY == 0 and world.online and world.away:
            gone, back = _swap(rng, world.online, world.away)
            wf.set_presence(gone, AWAY)
            wf.set_presence(back, ONLINE)
        if world.position % SCHEDULE_EVERY == 0 and world.in_schedule and world.outside:
            ended, started = _swap(rng, world.in_schedule, world.outside)
            wf.set_in_schedule(ended, False)
            wf.set_in_schedule(started, True)
        if record:
            timings.upkeep += clock() - u0


def _cached_requirements(wf: Workforce) -> int:
    """Diagnostics only: how many requirements the index has cached (a private structure; 0 if it changed)."""
    cache = getattr(wf, "_cache", None)
    return len(cache) if cache is not None else 0


def _eligible_pools(wf: Workforce, req: Any) -> int:
    """Diagnostics only (outside the timed region): how many skill pools the requirement matched. Reads the
    index's cache, a private structure; 0 if it has changed shape."""
    try:
        return len(wf._cache[req].pools)  # noqa: SLF001
    except (AttributeError, KeyError):
        return 0


# -- the baseline -----------------------------------------------------------------------------------------------------
_END, _STEM = 0, 1  # trie markers: the word ends here / any word characters may follow


def trie_pattern(words: list[str]) -> str:
    """One regex for many words (lower case; 'refund*' also matches refunds; a space matches any whitespace), with
    shared prefixes factored out, so the engine tries each character at most once per position."""
    trie: dict = {}
    for word in words:
        word = word.strip().lower()
        stem = word.endswith("*")
        node = trie
        for char in word.rstrip("*"):
            node = node.setdefault(char, {})
        node[_STEM if stem else _END] = None

    def emit(node: dict) -> str:
        options = []
        for key in sorted(node, key=str):
            if key == _END:
                options.append("")
            elif key == _STEM:
                options.append(r"\w*")
            else:
                options.append((r"\s+" if key == " " else re.escape(key)) + emit(node[key]))
        return options[0] if len(options) == 1 else "(?:" + "|".join(options) + ")"

    return rf"(?<!\w){emit(trie)}(?!\w)"


class Baseline:
    """The least work a routing decision can be: one precompiled regex search over the lower-cased text (every topic
    keyword, safety word and rule keyword in one trie-shaped alternation, and the rules' patterns), one dict
    lookup of a queue by (topic of the word found, language), and popping the head of that presorted queue.
    The agents are the same as ours; each queue is a binary heap of (load, last assigned, id) of the available
    agents speaking the language; after the timed pop the agent goes back with one more load (upkeep, not
    timed, as for ours). It detects no language (a message without one counts as English), evaluates no rule
    and keeps no index consistent: a floor for the cost, not a router."""

    def __init__(self, config: Config, agents: list[AgentState]):
        classification = config.classification
        words = [w for t in classification.topics.values() for ws in t.keywords.values() for w in ws]
        words += [w for ws in classification.safety.values() for w in ws]
        words += [w for r in config.routing.rules for w in (r.when.keywords or [])]
        patterns = [p for t in classification.topics.values() for p in t.patterns]
        patterns += [r.when.pattern for r in config.routing.rules if r.when.pattern]
        self.regex = re.compile("|".join([trie_pattern(words), *(f"(?i:{p})" for p in patterns)]))
        self.topic_of: dict[str, str] = {}  # a keyword as written (no stem) → its topic; other matches: no topic
        for name, topic in classification.topics.items():
            for ws in topic.keywords.values():
                for w in ws:
                    self.topic_of.setdefault(w.rstrip("*").lower(), name)
        self.queues: dict[tuple[str, str], list[tuple]] = {}
        speakers = {language: [a for a in agents if a.presence == ONLINE and a.in_schedule
                               and f"lang:{language}" in a.skills] for language in LANGUAGES}
        for key in ["", *classification.topics]:
            for language in LANGUAGES:
                queue = [(a.total_load, a.last_assigned_at or START - timedelta(days=1), a.id)
                         for a in speakers[language]]
                heapq.heapify(queue)
                self.queues[key, language] = queue
        self.timings = Timings()

    def run(self, samples: list[Sample], start: int, decisions: int, record: bool) -> None:
        clock, cpu_clock, search, queues, topic_of, timings = (
            time.perf_counter_ns, time.thread_time_ns, self.regex.search, self.queues, self.topic_of, self.timings)
        heappop, heappush = heapq.heappop, heapq.heappush
        for n in range(start, start + decisions):
            message = samples[n % len(samples)].message
            c0 = cpu_clock()
            t0 = clock()
            found = search(f"{message.subject or ''}\n{message.text}".lower())
            queue = queues[topic_of.get(found.group(0), "") if found else "", message.language or "en"]
            head = heappop(queue) if queue else None
            t1 = clock()
            c1 = cpu_clock()
            if head is not None:
                heappush(queue, (head[0] + 1, head[1], head[2]))
            if record:
                timings.record(t1 - t0)
                timings.cpu.append(c1 - c0)
                timings.assigned += head is not None


# -- reporting --------------------------------------------------------------------------------------------------------
def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of sorted nanoseconds, in microseconds."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index] / 1000


@dataclass(frozen=True)
class Stats:
    n: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, ns: list[int]) -> "Stats":
        values = sorted(ns)
        return cls(len(values), percentile(values, 50), percentile(values, 90), percentile(values, 99),
                   values[-1] / 1000 if values else float("nan"), statistics.fmean(values) / 1000 if values else 0.0)

    def row(self) -> str:
        return (f"{self.p50:8.1f} {self.p90:8.1f} {self.p99:8.1f} {self.max:9.1f} {self.mean:8.1f}")




def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--decisions", type=int, metavar="N",
                        help="measured decisions per workforce size (10000; --quick: 2000)")
    parser.add_argument("--messages", type=int, metavar="N",
                        help="distinct messages, cycled through; the warm-up routes each once (3000; --quick: 1000)")
    parser.add_argument("--rounds", type=int, metavar="N",
                        help="blocks the measured decisions are split into; the sizes take turns block by block, "
                        "so a busy moment of the machine hits all of them alike (10; --quick: 4)")
    parser.add_argument("--after-edit", type=int, metavar="N",
                        help="decisions measured after an agent's skills change (300; --quick: 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for config, messages and agents (1)")
    args = parser.parse_args()
    if args.decisions is None:
        args.decisions = 2_000 if args.quick else 10_000
    if args.messages is None:
        args.messages = 1_000 if args.quick else 3_000
    if args.rounds is None:
        args.rounds = 4 if args.quick else 10
    if args.after_edit is None:
        args.after_edit = 200 if args.quick else 300
    args.rounds = max(1, min(args.rounds, args.decisions))
    if min(args.decisions, args.messages) < 1:
        parser.error("--decisions and --messages must be at least 1")
    return args


def edit_one_agent(world: World) -> None:
    """An operator changes one agent's skills (a new language level): a skill set the index has not seen, so it
    makes a new pool and, as on every new pool, drops its cache of requirements."""
    wf = world.workforce
    agent = wf.get(world.online[0])
    skills = dict(agent.skills)
    skills["lang:en"] = 6 - skills.get("lang:en", 1) if skills.get("lang:en", 1) != 3 else 2
    skills["edited"] = 1  # nobody else has it: certainly a new skill set
    wf.upsert(AgentState(id=agent.id, name=agent.name, skills=skills, capacity=agent.capacity,
                         presence=agent.presence, in_schedule=agent.in_schedule, load=dict(agent.load),
                         last_assigned_at=agent.last_assigned_at))


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="switchboard-routing-bench-") as tmp:
        config = build_config(Path(tmp), rng)
    engine = RoutingEngine(config)
    samples = build_samples(rng, args.messages)
    worlds = [build_world(rng, count, config) for count in AGENT_COUNTS]
    baselines = [Baseline(config, list(world.workforce)) for world in worlds]
    tiers, limit = config.tiers, config.offers.candidate_limit
    chooser = Chooser()

    rules = config.routing.rules
    kinds = {k: sum(1 for r in rules if getattr(r.when, k) is not None)
             for k in ("keywords", "pattern", "business_hours", "expr")}
    print(f"routing benchmark: {len(rules)} rules ({', '.join(f'{n} with {k}' for k, n in kinds.items())}), "
          f"{len(config.classification.topics)} topics, {len(config.teams)} teams, {len(config.lines)} lines; "
          f"{len(samples):,} messages in {len(LANGUAGES)} languages (half without a language: detected), each "
          f"routed once to warm up, then {args.decisions:,} measured decisions per workforce in {args.rounds} "
          f"interleaved rounds", flush=True)
    for world in worlds:
        agents = list(world.workforce)
        ready = sum(1 for a in agents if a.presence == ONLINE and a.in_schedule)
        print(f"  {world.count:>6,} agents: {world.workforce.pool_count:,} distinct skill sets (pools); {ready:,} "
              f"online in schedule, {sum(a.presence == ONLINE and not a.in_schedule for a in agents):,} online "
              f"outside schedule, {sum(a.presence == AWAY for a in agents):,} away, "
              f"{sum(a.presence == OFFLINE for a in agents):,} offline; {world.target_open:,} open assignments")

    # What is built so far lives as long as a server keeps its configuration and workforce: freeze it, as a server
    # may after start-up, so that the collector does not walk it (nor the other sizes' agents) during the run.
    gc.collect()
    gc.freeze()

    for world, baseline in zip(worlds, baselines):
        run_block(world, engine, samples, len(samples), chooser, limit, tiers, record=False)
        baseline.run(samples, 0, len(samples), record=False)
    per_round = [args.decisions // args.rounds + (r < args.decisions % args.rounds) for r in range(args.rounds)]
    before = time.monotonic(), machine_busy_s(), time.process_time()
    done = len(samples)
    for block in per_round:
        for world in worlds:
            run_block(world, engine, samples, block, chooser, limit, tiers, record=True)
        for baseline in baselines:
            baseline.run(samples, done, block, record=True)
        done += block
    after = time.monotonic(), machine_busy_s(), time.process_time()
    wall, busy, own = (b - a for a, b in zip(before, after))
    others = max(busy - own, 0.0) / wall

    edited = {}
    if args.after_edit:
        for world in worlds:
            edit_one_agent(world)
            edited[world.count] = Timings()
            run_block(world, engine, samples, args.after_edit, chooser, limit, tiers, record=True,
                      into=edited[world.count])

    ours = {w.count: Stats.of(w.timings.total) for w in worlds}
    base = {w.count: Stats.of(b.timings.total) for w, b in zip(worlds, baselines)}
    print("\nper decision, µs               p50      p90      p99       max     mean   (classify route requirement "
          "select choose)  assigned  eligible pools")
    for world in worlds:
        t = world.timings
        n = len(t.total)
        phases = " ".join(f"{p / n / 1000:.1f}" for p in t.phases)
        print(f"  ours     {world.count:>6,} agents {ours[world.count].row()}   ({phases})  "
              f"{t.assigned / n:6.1%}  {t.eligible_pools / n:8.1f}")
    for world, baseline in zip(worlds, baselines):
        print(f"  baseline {world.count:>6,} agents {base[world.count].row()}   "
              f"{'':>30}  {baseline.timings.assigned / len(baseline.timings.total):6.1%}")
    print("  CPU time per decision, µs, p50 / p99 / mean (leaves out the waits for a core: the figures to trust in "
          "a NOISY run):")
    for who, timings in (("ours", [w.timings for w in worlds]), ("baseline", [b.timings for b in baselines])):
        print(f"    {who:<9}" + "   ".join(f"{w.count:>6,} agents {st.p50:,.1f} / {st.p99:,.1f} / {st.mean:,.1f}"
                                           for w, t in zip(worlds, timings) for st in [Stats.of(t.cpu)]))
    sel = {w.count: Stats.of(w.timings.select) for w in worlds}
    print("  the select step alone, µs: " + "; ".join(
        f"{c:,} agents p50 {st.p50:,.0f}, p99 {st.p99:,.0f}, mean {st.mean:,.0f}" for c, st in sel.items())
        + f"; mean at {AGENT_COUNTS[-1]:,} / at {AGENT_COUNTS[0]:,} agents "
        f"{ratio(sel[AGENT_COUNTS[-1]].mean, sel[AGENT_COUNTS[0]].mean):.1f}")
    print("  upkeep after each of our decisions (assign, release, presence and schedule changes), "
          "mean µs: " + ", ".join(f"{w.count:,} agents {w.timings.upkeep / len(w.timings.total) / 1000:.1f}"
                                  for w in worlds))
    for world in worlds:
        first = world.timings.first_seen
        if first:
            print(f"  {world.count:>6,} agents: {len(first)} measured decisions met a requirement the index had not "
                  f"cached; they took {statistics.fmean(first) / 1000:,.0f} µs on average, at most "
                  f"{max(first) / 1000:,.0f} µs")
    for count, t in edited.items():
        s = Stats.of(t.total)
        first = t.first_seen
        print(f"  after one agent's skills change, {count:>6,} agents, next {s.n} decisions: p50 {s.p50:,.0f} µs, "
              f"p99 {s.p99:,.0f}, max {s.max:,.0f}, mean {s.mean:,.0f}; the {len(first)} that rebuilt a requirement"
              + (f" took {statistics.fmean(first) / 1000:,.0f} µs on average" if first else ""))
    print(f"CPU: this process {own / wall:.2f} cores, other processes {others:.2f} (of {os.cpu_count()})"
          + (" -- NOISY: other processes were busy, numbers are unreliable" if others > NOISY_OTHERS else ""))

    small, large = AGENT_COUNTS[0], AGENT_COUNTS[-1]
    scaling = ratio(ours[large].mean, ours[small].mean)
    base_scaling = ratio(base[large].mean, base[small].mean)
    p99 = ours[large].p99
    print(f"targets: p99 at {large:,} agents {p99:,.0f} µs <= {TARGET_P99_US:,.0f} µs: "
          f"{'met' if p99 <= TARGET_P99_US else 'MISSED'}; mean cost at {large:,} / at {small:,} agents "
          f"{scaling:.2f} <= {TARGET_SCALING}: {'met' if scaling <= TARGET_SCALING else 'MISSED'}")
    if chooser.error:
        sys.stdout.flush()
        print("\n" + "!" * 72 + "\nswitchboard_choose_agent (router/core/assignment.py) raised on real candidates:\n"
              f"  {chooser.error}\nthe choose step used the head of the selection instead (same fairness order)\n"
              + "!" * 72, file=sys.stderr, flush=True)
    print(f"(ran {time.monotonic() - started:.0f} s)")
    print(f"RESULT routing_p99_10k ours={p99:.1f} baseline={base[large].p99:.2f} "
          f"ratio={ratio(p99, base[large].p99):.1f} us")
    print(f"RESULT routing_mean_10k ours={ours[large].mean:.1f} baseline={base[large].mean:.2f} "
          f"ratio={ratio(ours[large].mean, base[large].mean):.1f} us")
    print(f"RESULT routing_scaling ours={scaling:.2f} baseline={base_scaling:.2f} "
          f"ratio={ratio(scaling, base_scaling):.2f} x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
