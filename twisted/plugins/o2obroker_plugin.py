from twisted.application.service import ServiceMaker

o2obroker = ServiceMaker(
    "o2obroker",
    "o2obroker.service.tap",
    "A real-time message broker: binary TCP, WebSocket and long-poll clients.",
    "o2obroker",
)
