from twisted.application.service import ServiceMaker

teleproxy = ServiceMaker(
    "teleconch", "teleconch.tap", "teleconch: all-in-one cluster or proxy", "teleproxy"
)
teleauth = ServiceMaker(
    "teleconch auth",
    "teleconch.authtap",
    "teleconch: the auth service alone",
    "teleauth",
)
