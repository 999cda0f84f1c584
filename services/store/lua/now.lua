-- Redis's clock, in ms.
return now
