"""A name server for tests: answers every A query on UDP port 53 of ADDRESS with 192.0.2.7 (and other types with
no record), printing each name it was asked. Usage: fake_dns.py ADDRESS"""
import socket
import sys

server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind((sys.argv[1], 53))
print("serving", flush=True)
while True:
    query, client = server.recvfrom(4096)
    end = 12
    labels = []
    while query[end]:
        labels.append(query[end + 1:end + 1 + query[end]].decode())
        end += 1 + query[end]
    question = query[12:end + 5]
    a = question[-4:-2] == b"\x00\x01"
    print("asked", ".".join(labels), flush=True)
    answer = query[:2] + b"\x81\x80" + b"\x00\x01" + (b"\x00\x01" if a else b"\x00\x00") + b"\x00\x00\x00\x00" + question
    if a:
        answer += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([192, 0, 2, 7])
    server.sendto(answer, client)
