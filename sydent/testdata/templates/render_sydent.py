#!/usr/bin/env python3
"""Renders the test templates here as sydent 2.6.1 does (sydent/util/emailutils.py:
Python %-formatting with _forhtml/_forurl variants for .eml, Jinja2 with
autoescape=True for .eml.j2), with the values sydent's store-invite servlet
computes, into expected/. Herald's converted templates must give the same
body. Run it after changing a template: python3 render_sydent.py"""
import html, os, urllib.parse
from email.header import Header
import jinja2

here = os.path.dirname(os.path.abspath(__file__))
invite = {
    "medium": "email", "address": "invitee@example.org", "room_id": "!room:hs.test",
    "sender": "@alice:hs.test", "room_name": "Kitchen & <Table>/2", "room_alias": "#kitchen:hs.test",
    "sender_display_name": "Alice \"A\" O'Neil", "room_type": "", "room_avatar_url": "",
    "web_client_location": "https://chat.example.com", "token": "TOKEN", "ephemeral_private_key": "KEY+/=",
    "to": "invitee@example.org",
}
invite["bracketed_verified_sender"] = "(%s) " % invite["sender"]
invite["bracketed_room_name"] = "(%s) " % invite["room_name"]
invite["subject_header_value"] = Header("%s has invited you to chat" % invite["sender_display_name"], "utf8").encode()
invite["guest_access_token"] = ""
validation = {"to": "user@example.org", "token": "CODE", "link": "https://id.example/link?a=1&b=2",
              "subject_header_value": Header("Your Validation Token", "utf8").encode()}

def legacy(path, subs):
    allsubs = {"multipart_boundary": "BOUNDARY"}
    for k, v in subs.items():
        allsubs[k] = v
        allsubs[k + "_forhtml"] = html.escape(v)
        allsubs[k + "_forurl"] = urllib.parse.quote(v)
    allsubs.update({"date": "DATE", "from": "FROM", "messageid": "MID"})
    return open(path).read() % allsubs

def jinja(path, subs):
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.dirname(path)), autoescape=True)
    s = dict(subs)
    for k, v in subs.items():
        s[k + "_forhtml"] = html.escape(v)
        s[k + "_forurl"] = urllib.parse.quote(v)
    s.update({"date": "DATE", "from": "FROM", "messageid": "MID", "multipart_boundary": "BOUNDARY"})
    return env.get_template(os.path.basename(path)).render(s)

os.makedirs(os.path.join(here, "expected"), exist_ok=True)
for name, fn, subs in [("legacy/invite_template.eml", legacy, invite),
                       ("jinja/invite_template.eml.j2", jinja, invite),
                       ("jinja/verification_template.eml.j2", jinja, validation),
                       ("legacy/verification_template.eml", legacy, validation)]:
    out = fn(os.path.join(here, name), subs)
    with open(os.path.join(here, "expected", name.replace("/", "_")), "w") as f:
        f.write(out)
