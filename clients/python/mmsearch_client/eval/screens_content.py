"""The words on the screenshots of :mod:`mmsearch_client.eval.screens`, and what each page is about.

Every page has a ``paraphrase``: what someone looking for it might type, written without the page's own content
words (a few function words and generic nouns overlap, as they would in real queries). Distractor texts are
built from other topics in the same genres, so keyword search meets the same generic vocabulary ("revenue",
"total", "settings", "account") in documents that are not the answer.
"""

from __future__ import annotations

from typing import Any

Page = dict[str, Any]

DASHBOARDS: list[Page] = [
    {
        "title": "Coffee Shop Sales",
        "tiles": [
            ("Espresso shots", "4,210"),
            ("Latte orders", "2,975"),
            ("Pastry revenue", "$1,860"),
            ("Average ticket", "$7.40"),
        ],
        "note": "Beans restocked from the Porto roastery every Tuesday",
        "paraphrase": "how well the cafe's hot drinks and baked goods are selling",
    },
    {
        "title": "Server Uptime Overview",
        "tiles": [
            ("Availability", "99.982%"),
            ("Incidents", "3"),
            ("Mean time to recover", "14 min"),
            ("Pager alerts", "27"),
        ],
        "note": "Maintenance window for the Frankfurt cluster starts Sunday 02:00 UTC",
        "paraphrase": "how reliable our machines were and how often they went down",
    },
    {
        "title": "Bicycle Rental Activity",
        "tiles": [("Trips today", "1,482"), ("Docks empty", "37"), ("Electric bikes", "412"), ("Avg ride", "18 min")],
        "note": "Station 22 at Riverside Park closed for repainting",
        "paraphrase": "how many people hired cycles around town",
    },
    {
        "title": "Solar Farm Output",
        "tiles": [
            ("Generated", "8.4 MWh"),
            ("Panel efficiency", "21.3%"),
            ("Inverter faults", "2"),
            ("Irradiance", "640 W/m2"),
        ],
        "note": "Modules in row C were washed after the dust storm",
        "paraphrase": "how much electricity the sun-powered installation produced",
    },
    {
        "title": "Support Ticket Backlog",
        "tiles": [
            ("Open tickets", "1,126"),
            ("Oldest ticket", "19 days"),
            ("First reply", "3.2 h"),
            ("Satisfaction", "88%"),
        ],
        "note": "Weekend queue is covered by the Manila team",
        "paraphrase": "customer complaints still waiting for an answer from the helpdesk",
    },
    {
        "title": "Museum Visitor Numbers",
        "tiles": [
            ("Visitors", "12,840"),
            ("School groups", "46"),
            ("Audio guides", "2,310"),
            ("Gift shop sales", "9,420 EUR"),
        ],
        "note": "The Egyptian gallery reopens after restoration in May",
        "paraphrase": "attendance at the exhibitions and art collection",
    },
    {
        "title": "Warehouse Inventory",
        "tiles": [
            ("Pallets in stock", "5,602"),
            ("Low stock SKUs", "84"),
            ("Inbound trucks", "12"),
            ("Picking accuracy", "99.4%"),
        ],
        "note": "Aisle 14 freezer temperature alarm acknowledged",
        "paraphrase": "goods stored in the distribution centre",
    },
    {
        "title": "Mobile App Signups",
        "tiles": [
            ("New accounts", "9,731"),
            ("Android share", "61%"),
            ("Verified emails", "8,904"),
            ("Referral invites", "1,207"),
        ],
        "note": "Onboarding tutorial variant B is live for 10% of users",
        "paraphrase": "how many people registered on the phone application",
    },
    {
        "title": "Hotel Occupancy Report",
        "tiles": [
            ("Rooms booked", "212 of 240"),
            ("Average nightly rate", "$189"),
            ("Cancellations", "17"),
            ("Spa bookings", "58"),
        ],
        "note": "Conference guests from the dental congress check out Friday",
        "paraphrase": "how full the guesthouse is and what a stay costs",
    },
    {
        "title": "Cloud Spend Tracker",
        "tiles": [("Monthly cost", "$48,310"), ("Compute", "$29,870"), ("Storage", "$7,540"), ("Budget used", "82%")],
        "note": "Reserved instances expire on 30 November",
        "paraphrase": "what we pay for hosting and virtual machines",
    },
    {
        "title": "Clinic Appointments",
        "tiles": [("Booked today", "143"), ("No-shows", "9"), ("Avg wait", "22 min"), ("Telehealth visits", "31")],
        "note": "Flu vaccination drive runs every Saturday morning",
        "paraphrase": "patients seeing the doctors and how long they queue",
    },
    {
        "title": "Recycling Collection Volume",
        "tiles": [("Glass", "18.2 t"), ("Paper", "31.6 t"), ("Plastic", "12.9 t"), ("Contamination", "6.8%")],
        "note": "Bins on Harbour Street are emptied twice a week",
        "paraphrase": "how much waste was gathered for reuse, by material",
    },
]

SLIDES: list[Page] = [
    {
        "title": "Q3 Hiring Plan",
        "bullets": [
            "Open 14 engineering roles in Berlin",
            "Freeze marketing headcount until January",
            "Interns start on 2 September",
            "Relocation budget raised to $12,000",
        ],
        "paraphrase": "how many people we intend to recruit next quarter",
    },
    {
        "title": "Migration to Postgres 16",
        "bullets": [
            "Cutover planned for the night of 12 March",
            "Read replicas move first",
            "Rollback takes under 20 minutes",
            "Owners: data platform team",
        ],
        "paraphrase": "upgrading our relational database to a newer release",
    },
    {
        "title": "Customer Churn Analysis",
        "bullets": [
            "Churn fell to 2.1% per month",
            "Annual plans churn four times less",
            "Top reason: price increase in April",
            "Win-back emails recovered 340 accounts",
        ],
        "paraphrase": "why subscribers cancel and how many leave",
    },
    {
        "title": "Office Relocation Update",
        "bullets": [
            "New address: 48 Canal Road, Amsterdam",
            "Move-in week starts 3 June",
            "Bike parking for 120 bikes",
            "Desks are booked through the app",
        ],
        "paraphrase": "moving the company into a different workplace building",
    },
    {
        "title": "Security Awareness Training",
        "bullets": [
            "Phishing test click rate dropped to 4%",
            "Password manager mandatory from Monday",
            "Report suspicious mail to the security desk",
            "Completion deadline: 30 April",
        ],
        "paraphrase": "teaching staff to recognise scam emails",
    },
    {
        "title": "Product Roadmap 2026",
        "bullets": [
            "Offline mode ships in the spring release",
            "Dark theme for the web editor",
            "Public API v2 with webhooks",
            "Sunset of the legacy desktop client",
        ],
        "paraphrase": "which features we will build next year",
    },
    {
        "title": "Supplier Contract Review",
        "bullets": [
            "Renew packaging deal with Nordpack for two years",
            "Freight costs up 9% year over year",
            "Second source for lithium cells",
            "Penalty clause for late delivery",
        ],
        "paraphrase": "renegotiating agreements with the vendors who sell us materials",
    },
    {
        "title": "Energy Price Outlook",
        "bullets": [
            "Wholesale electricity forecast at 92 EUR/MWh",
            "Gas storage is 87% full",
            "Hedge 60% of winter demand",
            "Heat pumps cut site usage by 15%",
        ],
        "paraphrase": "what power and heating will cost us in the coming months",
    },
    {
        "title": "Library Loans Summary",
        "bullets": [
            "E-book loans overtook print in October",
            "Children's section doubled weekend visits",
            "Late fees abolished from 1 January",
            "New branch opening in Westgate",
        ],
        "paraphrase": "how many novels and titles readers borrowed",
    },
    {
        "title": "Incident Postmortem: Checkout Outage",
        "bullets": [
            "Payments failed for 47 minutes on Black Friday",
            "Root cause: expired TLS certificate",
            "Alert fired but was routed to an old channel",
            "Action: automate certificate renewal",
        ],
        "paraphrase": "why shoppers could not pay during the big sale",
    },
]

RECEIPTS: list[Page] = [
    {
        "title": "Harbor Coffee Roasters",
        "address": "12 Quay Street, Galway",
        "items": [("Flat white", "4.20"), ("Almond croissant", "3.80"), ("Oat milk", "0.50")],
        "paraphrase": "a cafe bill for a hot drink and a pastry",
    },
    {
        "title": "Green Valley Pharmacy",
        "address": "3 Market Square, Bath",
        "items": [("Ibuprofen 400mg", "6.99"), ("Throat lozenges", "4.49"), ("Sunscreen SPF50", "12.90")],
        "paraphrase": "a chemist purchase of painkillers and skin protection",
    },
    {
        "title": "Metro Hardware",
        "address": "220 Industrial Way, Leeds",
        "items": [("Cordless drill", "89.00"), ("Wood screws 5x40", "7.49"), ("Masking tape", "3.25")],
        "paraphrase": "a DIY store bill for power tools and fixings",
    },
    {
        "title": "Sakura Sushi Bar",
        "address": "7 Lantern Alley, Bristol",
        "items": [("Salmon nigiri x4", "11.60"), ("Miso soup", "3.50"), ("Green tea", "2.80")],
        "paraphrase": "a Japanese restaurant bill for raw fish dishes",
    },
    {
        "title": "City Parking Garage",
        "address": "Level B2, Central Station",
        "items": [("Entry 08:14 Exit 17:52", ""), ("Duration 9h 38m", ""), ("Daily maximum", "24.00")],
        "paraphrase": "what I paid to leave the car all day in a multi-storey",
    },
    {
        "title": "Bright Spark Electronics",
        "address": "55 High Road, Croydon",
        "items": [("USB-C cable 2m", "14.99"), ("Wireless mouse", "29.99"), ("AA batteries 8-pack", "6.49")],
        "paraphrase": "a gadget shop bill for computer accessories",
    },
    {
        "title": "Fresh Market Grocers",
        "address": "18 Orchard Lane, York",
        "items": [
            ("Bananas 1.2kg", "1.44"),
            ("Whole milk 2L", "1.89"),
            ("Sourdough loaf", "3.95"),
            ("Free-range eggs 12", "4.20"),
        ],
        "paraphrase": "supermarket shopping for fruit, dairy and bread",
    },
    {
        "title": "Alpine Ski Rental",
        "address": "Chalet Road 4, Zermatt",
        "items": [("Ski package 3 days", "96.00"), ("Helmet", "15.00"), ("Damage waiver", "9.00")],
        "paraphrase": "hiring equipment for a winter holiday on the slopes",
    },
    {
        "title": "Quick Cuts Barbershop",
        "address": "9 Mill Street, Cork",
        "items": [("Haircut and beard trim", "32.00"), ("Hair wax", "14.00"), ("Tip", "5.00")],
        "paraphrase": "paying the barber for a trim",
    },
    {
        "title": "Northside Veterinary Clinic",
        "address": "140 Northside Avenue, Dublin",
        "items": [("Annual vaccination", "58.00"), ("Flea treatment", "21.50"), ("Consultation", "45.00")],
        "paraphrase": "the bill for taking the dog to the animal doctor",
    },
]

SETTINGS: list[Page] = [
    {
        "title": "Privacy settings",
        "options": [
            ("Share location with contacts", "Your friends can follow your position on the map"),
            ("Read receipts", "Let others know when you have opened their messages"),
            ("Profile photo visibility", "Everyone, contacts only, or nobody"),
        ],
        "paraphrase": "how do I stop people tracking where I am",
    },
    {
        "title": "Notification preferences",
        "options": [
            ("Email digest", "A summary of activity every Monday"),
            ("Push alerts for mentions", "Sent when a teammate tags you in a comment"),
            ("Quiet hours", "Silence alerts between 22:00 and 07:00"),
        ],
        "paraphrase": "turn off pings at night",
    },
    {
        "title": "Display and brightness",
        "options": [
            ("Night shift schedule", "Warmer colours from sunset to sunrise"),
            ("Text size", "Large"),
            ("Auto-lock", "Lock the screen after 2 minutes"),
        ],
        "paraphrase": "make the monitor look yellower in the evening and the font bigger",
    },
    {
        "title": "Billing and payment methods",
        "options": [
            ("Card on file", "Visa ending 4242, expires 08/29"),
            ("Billing address", "9 Elm Lane, Leeds"),
            ("Invoice recipient", "Invoices are emailed to finance@acme.test"),
        ],
        "paraphrase": "change the credit card we are charged on",
    },
    {
        "title": "Two-factor authentication",
        "options": [
            ("Authenticator app", "Enabled on an iPhone 15"),
            ("Backup codes", "8 single-use codes remaining"),
            ("Trusted devices", "3 devices skip the second step for 30 days"),
        ],
        "paraphrase": "extra login security with a one-time code",
    },
    {
        "title": "Wi-Fi network",
        "options": [
            ("Network name", "OfficeGuest-5G"),
            ("Security", "WPA3 Personal"),
            ("Forget this network", "Remove the saved password from this laptop"),
        ],
        "paraphrase": "wireless internet connection details",
    },
    {
        "title": "Storage management",
        "options": [
            ("Photos", "41.2 GB used by 18,320 pictures"),
            ("Offload unused apps", "Keep documents, remove the app itself"),
            ("Recently deleted", "Empty the bin to reclaim 3.4 GB"),
        ],
        "paraphrase": "free up space on the phone",
    },
    {
        "title": "Language and region",
        "options": [
            ("App language", "Portugues (Brasil)"),
            ("Date format", "DD/MM/YYYY"),
            ("Temperature unit", "Celsius"),
        ],
        "paraphrase": "switch the interface to another tongue and change how days appear",
    },
    {
        "title": "Team members and roles",
        "options": [
            ("Invite by email", "New members join as viewers"),
            ("Roles", "Admin, editor or viewer"),
            ("Pending invitations", "4 people have not accepted yet"),
        ],
        "paraphrase": "give a colleague permission to modify our workspace",
    },
    {
        "title": "Backup and restore",
        "options": [
            ("Last backup", "Today at 03:12, 2.7 GB"),
            ("Back up over cellular", "Use mobile data when no Wi-Fi is around"),
            ("Restore from snapshot", "Roll back to a previous copy of your files"),
        ],
        "paraphrase": "get my old data back from a saved copy",
    },
]

SCANS: list[Page] = [
    {
        "title": "Notice of Rent Increase",
        "body": [
            "Dear tenant of apartment 4B,",
            "from 1 March the monthly rent will rise",
            "from 1,150 to 1,240 euros.",
            "The service charge stays unchanged.",
            "Please update your standing order.",
            "Property management, Keizersgracht 77",
        ],
        "paraphrase": "letter saying the flat will cost more each month",
    },
    {
        "title": "Minutes: Garden Committee",
        "body": [
            "Present: six members and the treasurer.",
            "The committee agreed to plant twelve apple trees",
            "along the north fence in November.",
            "Compost bins will be moved near the gate.",
            "Next meeting on the first Sunday of spring.",
        ],
        "paraphrase": "notes from the group that looks after the allotments",
    },
    {
        "title": "Warranty Certificate",
        "body": [
            "This dishwasher model DW-600 is covered",
            "for parts and labour for 24 months",
            "from the date of purchase.",
            "Keep this certificate with your receipt.",
            "Serial number 88-4410-QX",
        ],
        "paraphrase": "guarantee document for a kitchen appliance",
    },
    {
        "title": "Jury Summons",
        "body": [
            "You are required to attend the County Court",
            "on 14 October at 9:30 in the morning.",
            "Bring this letter and photo identification.",
            "Failure to attend may result in a fine.",
            "Juror number 50317",
        ],
        "paraphrase": "official letter asking me to serve at a trial",
    },
    {
        "title": "Field Trip Permission Form",
        "body": [
            "Year 5 pupils will visit the Science Museum",
            "on Thursday 8 May, leaving at 8:45.",
            "Packed lunch and a raincoat are needed.",
            "Cost per pupil: 12 pounds.",
            "Parent or guardian signature:",
        ],
        "paraphrase": "parents must sign so their child can go on an outing",
    },
    {
        "title": "Laboratory Results",
        "body": [
            "Patient: R. Lindqvist, sample taken 3 June",
            "Cholesterol total 5.8 mmol/L (above range)",
            "HDL 1.3 mmol/L",
            "Vitamin D 42 nmol/L (low)",
            "Please book a follow-up with your GP.",
        ],
        "paraphrase": "blood test values from the hospital",
    },
    {
        "title": "Property Tax Assessment",
        "body": [
            "The assessed value of parcel 118-22",
            "is 312,000 dollars for the fiscal year.",
            "The first installment of 1,870 dollars",
            "is due on 15 September.",
            "Appeals must be filed within 30 days.",
        ],
        "paraphrase": "how much the council thinks my house is worth for taxes",
    },
    {
        "title": "Employment Reference",
        "body": [
            "Maria Okafor worked as a senior accountant",
            "at our firm from 2019 to 2024.",
            "She led the quarterly close and audits",
            "and trained four junior staff.",
            "I recommend her without reservation.",
        ],
        "paraphrase": "recommendation from a former boss",
    },
    {
        "title": "Insurance Claim Acknowledgement",
        "body": [
            "We have received your claim for water damage",
            "to the kitchen ceiling, reference CL-77310.",
            "An assessor will call within five working days.",
            "Please keep photos of the affected area.",
            "Policy holder: J. Brennan",
        ],
        "paraphrase": "the insurer confirms they got my report about a leak",
    },
    {
        "title": "Library Overdue Notice",
        "body": [
            "The following items are overdue:",
            "A Brief History of Tides, due 2 April",
            "Knitting for Beginners, due 9 April",
            "Please return them to the Eastgate branch.",
            "Borrower card 2290 4471",
        ],
        "paraphrase": "reminder that I forgot to return borrowed books",
    },
]

DISTRACTOR_TOPICS = [
    "ferry passengers",
    "bakery orders",
    "wind speed",
    "exam scores",
    "crop yield",
    "taxi fares",
    "podcast downloads",
    "bird sightings",
    "garden harvest",
    "bus punctuality",
    "chess ratings",
    "ice cream demand",
    "forest cover",
    "water usage",
    "parcel deliveries",
    "gym memberships",
    "concert tickets",
    "train delays",
    "newsletter opens",
    "volunteer hours",
    "pizza deliveries",
    "bridge tolls",
    "swimming lessons",
    "laundry loads",
    "car washes",
    "flower orders",
    "theatre seats",
    "pet adoptions",
    "snow clearing",
    "tram ridership",
    "boat rentals",
    "printer jobs",
    "vending machines",
    "street lighting",
    "dental checkups",
    "tyre changes",
    "wedding bookings",
    "kayak tours",
    "cinema screenings",
    "yoga classes",
]

DISTRACTOR_TEMPLATES = [
    "Weekly report on {topic}: the total rose to {n} and the team expects more next month.",
    "Dashboard note: {topic} revenue reached {n} in the third quarter, ahead of the budget.",
    "Meeting minutes: we reviewed {topic} and agreed to update the account settings by Friday.",
    "Invoice summary for {topic}: subtotal {n}, tax included, payment due in 30 days.",
    "Customer email about {topic}: the order arrived late and the receipt showed the wrong total.",
    "Settings change request: enable alerts for {topic} when the daily count exceeds {n}.",
    "Slide draft: {topic} grew {p}% year over year; next steps are hiring and a new office.",
    "Letter to members: {topic} will be reviewed at the annual meeting on the first Monday.",
]
