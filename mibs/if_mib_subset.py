"""IF-MIB (RFC 2863), the subset the encryptor driver and simulators use, as SMIv2 text.

Why a subset written here: the encryptors' ports are managed through the standard IF-MIB,
but Debian ships its text only in the non-free `snmp-mibs-downloader` (which fetches it from
the network), and neither pysnmp 7 nor pysmi 2 bundles it. This text declares the same
names, numbers and syntaxes as RFC 2863 for the objects it keeps (ifTable: index, description,
admin/oper status, speed, discards, errors; ifXTable: name, 64-bit octet counters, high speed,
alias), so a device's real IF-MIB answers it and a system's complete IF-MIB can replace it.
Unlike the SMIv2 core stand-ins it is compiled into a runtime module (pysnmp ships none).
"""

from __future__ import annotations

IF_MIB = """\
IF-MIB DEFINITIONS ::= BEGIN

-- qkdtel subset of RFC 2863: the objects listed in the module's description.

IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, Counter32, Gauge32, Counter64, Integer32, mib-2
        FROM SNMPv2-SMI
    TEXTUAL-CONVENTION, DisplayString
        FROM SNMPv2-TC;

ifMIB MODULE-IDENTITY
    LAST-UPDATED "200006140000Z"
    ORGANIZATION "IETF Interfaces MIB Working Group"
    CONTACT-INFO
        "qkdtel keeps this subset of RFC 2863; see the IETF for the module."
    DESCRIPTION
        "Subset of the interfaces MIB (RFC 2863) kept by qkdtel: ifIndex,
        ifDescr, ifSpeed, ifAdminStatus, ifOperStatus, ifInDiscards,
        ifInErrors, ifOutDiscards, ifOutErrors, ifName, ifHCInOctets,
        ifHCOutOctets, ifHighSpeed, ifAlias. Names, numbers and syntaxes
        are those of RFC 2863."
    REVISION "200006140000Z"
    DESCRIPTION
        "RFC 2863 subset."
    ::= { mib-2 31 }

ifMIBObjects OBJECT IDENTIFIER ::= { ifMIB 1 }
interfaces   OBJECT IDENTIFIER ::= { mib-2 2 }

InterfaceIndex ::= TEXTUAL-CONVENTION
    DISPLAY-HINT "d"
    STATUS       current
    DESCRIPTION  "A unique value, greater than zero, for each interface."
    SYNTAX       Integer32 (1..2147483647)

ifTable OBJECT-TYPE
    SYNTAX      SEQUENCE OF IfEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "A list of interface entries."
    ::= { interfaces 2 }

ifEntry OBJECT-TYPE
    SYNTAX      IfEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "An entry containing management information of an interface."
    INDEX       { ifIndex }
    ::= { ifTable 1 }

IfEntry ::= SEQUENCE {
    ifIndex         InterfaceIndex,
    ifDescr         DisplayString,
    ifSpeed         Gauge32,
    ifAdminStatus   INTEGER,
    ifOperStatus    INTEGER,
    ifInDiscards    Counter32,
    ifInErrors      Counter32,
    ifOutDiscards   Counter32,
    ifOutErrors     Counter32
}

ifIndex OBJECT-TYPE
    SYNTAX      InterfaceIndex
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "A unique value, greater than zero, for each interface."
    ::= { ifEntry 1 }

ifDescr OBJECT-TYPE
    SYNTAX      DisplayString (SIZE (0..255))
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "A textual string containing information about the interface."
    ::= { ifEntry 2 }

ifSpeed OBJECT-TYPE
    SYNTAX      Gauge32
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "An estimate of the interface's current bandwidth in bits per second."
    ::= { ifEntry 5 }

ifAdminStatus OBJECT-TYPE
    SYNTAX      INTEGER { up(1), down(2), testing(3) }
    MAX-ACCESS  read-write
    STATUS      current
    DESCRIPTION "The desired state of the interface."
    ::= { ifEntry 7 }

ifOperStatus OBJECT-TYPE
    SYNTAX      INTEGER { up(1), down(2), testing(3), unknown(4), dormant(5),
                          notPresent(6), lowerLayerDown(7) }
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "The current operational state of the interface."
    ::= { ifEntry 8 }

ifInDiscards OBJECT-TYPE
    SYNTAX      Counter32
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Inbound packets discarded though no error was detected."
    ::= { ifEntry 13 }

ifInErrors OBJECT-TYPE
    SYNTAX      Counter32
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Inbound packets that contained errors."
    ::= { ifEntry 14 }

ifOutDiscards OBJECT-TYPE
    SYNTAX      Counter32
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Outbound packets discarded though no error was detected."
    ::= { ifEntry 19 }

ifOutErrors OBJECT-TYPE
    SYNTAX      Counter32
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Outbound packets that could not be transmitted because of errors."
    ::= { ifEntry 20 }

ifXTable OBJECT-TYPE
    SYNTAX      SEQUENCE OF IfXEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "A list of interface entries (extension)."
    ::= { ifMIBObjects 1 }

ifXEntry OBJECT-TYPE
    SYNTAX      IfXEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "Additional management information of an interface."
    AUGMENTS    { ifEntry }
    ::= { ifXTable 1 }

IfXEntry ::= SEQUENCE {
    ifName          DisplayString,
    ifHCInOctets    Counter64,
    ifHCOutOctets   Counter64,
    ifHighSpeed     Gauge32,
    ifAlias         DisplayString
}

ifName OBJECT-TYPE
    SYNTAX      DisplayString
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "The textual name of the interface."
    ::= { ifXEntry 1 }

ifHCInOctets OBJECT-TYPE
    SYNTAX      Counter64
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Octets received on the interface (64 bits)."
    ::= { ifXEntry 6 }

ifHCOutOctets OBJECT-TYPE
    SYNTAX      Counter64
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Octets transmitted out of the interface (64 bits)."
    ::= { ifXEntry 10 }

ifHighSpeed OBJECT-TYPE
    SYNTAX      Gauge32
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "The interface's current bandwidth in units of 1,000,000 bits per second."
    ::= { ifXEntry 15 }

ifAlias OBJECT-TYPE
    SYNTAX      DisplayString (SIZE (0..64))
    MAX-ACCESS  read-write
    STATUS      current
    DESCRIPTION "An alias name for the interface as specified by a network manager."
    ::= { ifXEntry 18 }

END
"""
