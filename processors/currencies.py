"""ISO 4217 currencies and their minor units (M3: what a tariff filing may name). Pure.

A rate authority files a tariff in its currency; the mesh rounds every settlement line to that
currency's minor unit by the authority's declared rule. A filing is refused when its currency is
not an active ISO 4217 code (``UNKNOWN_CURRENCY``), when its declared minor units are not the
currency's (``MINOR_UNITS_MISMATCH``: JPY has 0, USD 2, KWD 3, ...) or when it declares no
rounding rule (``UNKNOWN_ROUNDING``). Funds codes, precious metals and testing codes (XAU, XTS,
XXX, ...) have no minor unit and settle nothing here.
"""

from __future__ import annotations

from chargemesh.processors.reasons import Reason, Rejection

# The rounding rules a filing may declare (the Avro enum's symbols but UNKNOWN).
ROUNDING_RULES = frozenset({"HALF_UP", "HALF_EVEN", "DOWN", "UP"})

_ZERO = ("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF")
_THREE = ("BHD IQD JOD KWD LYD OMR TND")
_FOUR = ("CLF UYW")
_TWO = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP "
    "BYN BZD CAD CDF CHE CHF CHW CNY COP COU CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR "
    "FJD FKP GBP GEL GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW "
    "KYD KZT LAK LBP LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN "
    "NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD "
    "SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD USN UYU "
    "UZS VED VES WST XCD XCG YER ZAR ZMW ZWG ZWL"
)

MINOR_UNITS: dict[str, int] = {
    code: units
    for codes, units in ((_ZERO, 0), (_TWO, 2), (_THREE, 3), (_FOUR, 4))
    for code in codes.split()
}


def filing_problem(currency: str, minor_units: int, rounding: str) -> Rejection | None:
    """Why a tariff's currency, minor units and rounding rule do not fit together, or None."""
    expected = MINOR_UNITS.get(currency)
    if expected is None:
        return Rejection(Reason.UNKNOWN_CURRENCY, f"{currency!r} is not an ISO 4217 currency "
                         "code with a minor unit")
    if minor_units != expected:
        return Rejection(Reason.MINOR_UNITS_MISMATCH, f"{currency} has {expected} minor units, "
                         f"the filing declares {minor_units}")
    if rounding not in ROUNDING_RULES:
        return Rejection(Reason.UNKNOWN_ROUNDING, f"rounding {rounding!r} is not one of "
                         f"{sorted(ROUNDING_RULES)}")
    return None
